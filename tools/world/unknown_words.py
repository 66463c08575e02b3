"""The pipeline's text tower learns that a word it never read is not noise (the ``unknown_words`` stage).

The toy tokenizer knows the world's words whole; any other word — a user's trigger (``zorabek``), a novel
value's name (``crown``, ``purple``) — it spells in letters and word pieces, whose embeddings no stage of
the pipeline's text tower ever trained. Those rows are noise, and the causal tower let them scramble every
word after them: at seed 42 the base drew none of King Zorabek's asked backgrounds and styles (0 of 24). A
real CLIP, which read billions of captions, is not thrown by one unknown word.

This stage trains only those rows — the embeddings of the tokens no text of the world uses
(``known_tokens``) — so every known prompt embeds bit for bit as before and the UNet needs no retune. Each
step takes world captions, inserts unknown words (the novel values' words, and random letter strings
like a user's trigger), and holds the tower, per token, to the trained tower's reading of the same caption
without them (``clean_alignment``): the known words' penultimate states and the pooled embedding match it,
and the unknown words' own states are held, more loosely (``Stage.anchor_weight``), to the state of the
known word before them. What it does not give them is a reading of their own: different unknown words end up
read alike (the model card has the figures), so a LoRA has little in them to tie a character to.
"""

from __future__ import annotations

import copy
import random

import torch

from tools.world.attributes import NOVEL_ATTRIBUTES, sample_character, sentence_caption, tag_caption
from tools.world.checkpoints import Build, Trainer, load_trained_clip, require_finished
from tools.world.nets import PROMPT_TOKENS, text_towers
from tools.world.recipe import Stage, batch_seed
from tools.world.tokenizer import WORD_PATTERN

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def known_tokens(corpus: list[str], tokenizer) -> set[int]:
    """Every token id of ``corpus``, the text the world's tokenizer was made from (its captions, the taxonomy's
    phrases in the analyzer's templates, the product's prompts): the rows the pipeline's tower has read."""
    return {token for ids in tokenizer(sorted(set(corpus))).input_ids for token in ids}


def known_words(corpus: list[str]) -> frozenset[str]:
    """Every word of ``corpus`` as CLIP's tokenizer splits words (lower case)."""
    return frozenset(word.lower() for text in set(corpus) for word in WORD_PATTERN.findall(text))


def unknown_word(rng: random.Random, novel_words: tuple[str, ...]) -> str:
    """A novel value's word (two in five), else a trigger-like string of 3-10 random letters."""
    if novel_words and rng.random() < 0.4:
        return rng.choice(novel_words)
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 10)))


def caption_with_unknown_words(rng: random.Random, novel_words: tuple[str, ...]) -> str:
    """A world caption with one to five unknown words: as tags of their own or before a known phrase
    (``crown``, ``purple robe``) in the tag form, between words in the sentence form."""
    character = sample_character(rng)
    if rng.random() < 0.6:
        phrases = tag_caption(character, rng, keep=rng.uniform(0.3, 1.0)).split(", ")
        for _ in range(rng.randint(1, 5)):
            words = " ".join(unknown_word(rng, novel_words) for _ in range(rng.choice((1, 1, 2))))
            if rng.random() < 0.5:
                phrases.insert(rng.randint(0, len(phrases)), words)
            else:
                index = rng.randrange(len(phrases))
                phrases[index] = f"{words} {phrases[index]}"
        return ", ".join(phrases)
    words = sentence_caption(character, rng).split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), unknown_word(rng, novel_words))
    return " ".join(words)


def clean_alignment(caption: str, tokenizer, known: frozenset[str],
                    word_tokens: dict[str, list[int]] | None = None) -> tuple[list[int], list[int], list[int]]:
    """(``caption``'s token ids as the pipeline feeds them, its clean version's — the unknown words, and the comma
    that would join a tag made of them alone to the rest, left out — and for each position of the first the clean
    position it reads as, −1 where it is an unknown word's). Both are ``PROMPT_TOKENS`` long, truncated keeping the
    end token and padded with it, as the pipeline's tokenizer does. CLIP's BPE never merges across words, so
    word-by-word tokens are the caption's (``word_tokens`` keeps them between calls)."""
    word_tokens = {} if word_tokens is None else word_tokens
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    ids, unknown = [bos], [False]
    tag_unknown, tag_words, comma_before = True, False, None  # the tag so far holds unknown words alone
    for word in WORD_PATTERN.findall(caption.lower()):
        if word not in word_tokens:
            word_tokens[word] = tokenizer(word, add_special_tokens=False).input_ids
        tokens = word_tokens[word]
        if word == ",":  # the comma after a tag of unknown words alone goes with it
            if not (tag_unknown and tag_words):
                comma_before = len(ids)
            ids, unknown = ids + tokens, unknown + [tag_unknown and tag_words] * len(tokens)
            tag_unknown, tag_words = True, False
            continue
        ids, unknown = ids + tokens, unknown + [word not in known] * len(tokens)
        tag_unknown, tag_words = tag_unknown and word not in known, True
    if tag_unknown and tag_words and comma_before is not None:  # the last tag is unknown words alone
        unknown[comma_before] = True
    ids, unknown = ids[:PROMPT_TOKENS - 1] + [eos], unknown[:PROMPT_TOKENS - 1] + [False]
    padding = PROMPT_TOKENS - len(ids)
    ids, unknown = ids + [eos] * padding, unknown + [False] * padding
    clean = [token for token, is_unknown in zip(ids, unknown) if not is_unknown]
    clean += [eos] * (PROMPT_TOKENS - len(clean))
    positions, next_clean = [], 0
    for is_unknown in unknown:
        positions.append(-1 if is_unknown else next_clean)
        next_clean += not is_unknown
    return ids, clean, positions


def alignment_loss(encoder, reference, ids, clean, positions, unknown_weight: float) -> torch.Tensor:
    """Known positions' penultimate states and the pooled embedding against the reference's reading of the
    clean captions; unknown positions' states, ``unknown_weight`` ×, against the known word before them."""
    out = encoder(ids, output_hidden_states=True)
    with torch.no_grad():
        target = reference(clean, output_hidden_states=True)
    hidden, target_hidden = out.hidden_states[-2], target.hidden_states[-2]
    known = positions >= 0

    def at(index: torch.Tensor) -> torch.Tensor:
        return torch.gather(target_hidden, 1, index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))

    known_error = ((hidden - at(positions.clamp(min=0))) ** 2).mean(-1)
    loss = (known_error * known).sum() / known.sum()
    before = torch.cummax(torch.where(known, positions, torch.full_like(positions, -1)), dim=1).values.clamp(min=0)
    unknown_error = ((hidden - at(before)) ** 2).mean(-1)
    loss = loss + unknown_weight * (unknown_error * ~known).sum() / (~known).sum().clamp(min=1)
    return loss + ((out.text_embeds - target.text_embeds) ** 2).mean()


def train_unknown_words(build: Build, stage: Stage, corpus: list[str]) -> None:
    """Train the embeddings of the tokens ``corpus`` (the tokenizer's) never uses, in the text tower of the
    CLIP stage ``after`` (the one the pipeline's UNet trained on), every other weight as it was."""
    require_finished(build, stage.after)
    clip_model, tokenizer = load_trained_clip(build, stage.after)
    _, encoder = text_towers(clip_model)
    encoder.requires_grad_(False)
    reference = copy.deepcopy(encoder)  # the tower as it was: the targets
    embedding = encoder.get_input_embeddings().weight
    embedding.requires_grad_(True)
    known_ids = torch.tensor(sorted(known_tokens(corpus, tokenizer)))
    trainable_rows = torch.ones(embedding.shape[0], 1)
    trainable_rows[known_ids] = 0.0
    embedding.register_hook(lambda grad: grad * trainable_rows)  # Adam moves no row whose gradient is always zero
    known = known_words(corpus)
    novel_words = tuple(sorted({w for values in NOVEL_ATTRIBUTES.values() for value in values
                                for w in value.split()} - known))
    optimizer = torch.optim.Adam([embedding], lr=stage.lr)
    trainer = Trainer(build, stage, {"text": encoder}, optimizer)
    first_seed = batch_seed(build.recipe, stage)
    word_tokens: dict[str, list[int]] = {}

    def step(index: int) -> torch.Tensor:
        rng = random.Random(first_seed + index)
        rows = [clean_alignment(caption_with_unknown_words(rng, novel_words), tokenizer, known, word_tokens)
                for _ in range(stage.batch)]
        ids, clean, positions = (torch.tensor([row[i] for row in rows]) for i in range(3))
        return alignment_loss(encoder, reference, ids, clean, positions, stage.anchor_weight)

    trainer.run(step)
    moved = (embedding.detach() != reference.get_input_embeddings().weight).any(dim=1)
    build.record(stage.name, trainable_rows=int(trainable_rows.sum()), moved_rows=int(moved.sum()), known_rows=len(known_ids))
