"""The toy world's CLIP tokenizer: byte-level BPE trained on the world's text, saved as CLIP's two files.

CLIP's tokenizer lower-cases, splits words with a regex, and runs byte-level BPE whose word-final
symbols carry ``</w>``; its ``vocab.json`` is the 256 byte symbols, the same with ``</w>``, one entry
per merge in order, then ``<|startoftext|>`` / ``<|endoftext|>``. We train the merges with
``tokenizers`` on the same word split and write both files in exactly that layout, so the stock
``transformers.CLIPTokenizer`` reads them. With whole-word tokens a caption of the world fits SDXL's
77-token window (one token per byte would not).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import regex

from tools.atomic import atomic_write_text

# CLIP's own word split (openai/CLIP simple_tokenizer.py), applied after lower-casing.
WORD_PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                             regex.IGNORECASE)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP byte-to-unicode table (in CLIP's vocabulary order): printable bytes map to themselves,
    the rest to code points above 255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {byte: chr(code) for byte, code in zip(printable, codes)}


def _byte_word(word: str, table: dict[int, str]) -> str:
    return "".join(table[b] for b in word.encode("utf-8"))


def train_clip_bpe(texts: Iterable[str], out_dir: Path, vocab_size: int = 2048) -> Path:
    """Train merges on ``texts`` and write ``vocab.json`` + ``merges.txt`` into ``out_dir``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    table = byte_symbols()
    words = (" ".join(_byte_word(w, table) for w in WORD_PATTERN.findall(t.lower())) for t in texts)
    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    symbols = list(table.values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=symbols, end_of_word_suffix="</w>",
                                  min_frequency=2, show_progress=False, special_tokens=[])
    tokenizer.train_from_iterator(words, trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    vocab = symbols + [s + "</w>" for s in symbols]
    seen = set(vocab)
    kept = []
    for left, right in merges:
        merged = left + right
        if merged not in seen:  # tokenizers may learn a merge whose result the byte table already holds
            seen.add(merged)
            vocab.append(merged)
            kept.append((left, right))
    vocab += [BOS, EOS]
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "vocab.json", json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    atomic_write_text(out_dir / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept))
    return out_dir


def load_clip_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77,
                         pad_token=EOS)
