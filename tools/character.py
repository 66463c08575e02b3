"""Who the LoRA is of: the character's trigger token, name and prompt, and the checks on them.

A references folder may hold a ``character.json`` beside its pictures (as it may hold a ``taxonomy.json``):
``{"trigger_token": "zorabek", "character_name": "King Zorabek", "test_prompt": "..."}``, every key optional.
What the settings leave empty comes from there, else from the folder's name — never from another character.
Everything downstream of the analysis (captions, validation and test prompt, the LoRA's file name, titles)
takes the trigger and name the analysis recorded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Sequence

from tools.errors import InputError
from tools.settings import slug  # character.json itself is read with the settings (read_character_card)


def lora_name(character_name: str, trigger_token: str) -> str:
    """The LoRA's file and ``ss_output_name``: ``<character>_lora`` (``king_zorabek_lora``)."""
    return f"{slug(character_name) or slug(trigger_token) or 'character'}_lora"


def prompt_from_analysis(analysis: dict) -> str:
    """The round's prompt when no ``test_prompt`` is set: the trigger token and the key features the
    analysis found (the style and background among them, as their categories' winners) — what the
    captions taught, in the order the captions say it."""
    return analysis["training_prompt"]


def words(text: str) -> set[str]:
    return {w for w in re.split(r"[^\w']+", text.lower()) if w}


def common_word_warning(trigger_token: str, vocabulary: Iterable[str]) -> str:
    """One line when the trigger token is a word the prompts already use (the taxonomy's descriptions, the
    negative prompt): the text encoder gives it that meaning, and captions that say it twice blur both."""
    token = trigger_token.strip().lower()
    known = set()
    for text in vocabulary:
        known |= words(text)
    if token in known:
        return (f"trigger token {trigger_token!r} is a common word already in the prompt vocabulary — the LoRA "
                "must override its meaning; a made-up word such as 'bluebot' or 'zorabek' works better "
                "(--trigger-token)")
    return ""


def _trigger_pattern(trigger_token: str) -> re.Pattern:
    """The trigger as whole words, any case and spacing ("ohwx man" too)."""
    return re.compile(rf"(?i)\b{re.escape(' '.join(trigger_token.split()))}\b")


def has_trigger(text: str, trigger_token: str) -> bool:
    """Whether ``text`` names the trigger token as whole words (a caption, a prompt, a class prompt)."""
    return bool(trigger_token.strip()) and _trigger_pattern(trigger_token).search(" ".join(text.split())) is not None


def without_trigger(caption: str, trigger_token: str) -> str:
    """``caption`` with the trigger taken out of every comma-separated tag, a tag left empty dropped — what
    output preservation holds to the base model ("aldarkose, round face" -> "round face"; "aldarkose style" ->
    "style")."""
    pattern = _trigger_pattern(trigger_token)
    tags = [" ".join(pattern.sub(" ", " ".join(tag.split())).split()) for tag in caption.split(",")]
    return ", ".join(tag for tag in tags if tag)


def trigger_spelled(text: str, trigger_token: str) -> str:
    """``text`` with the trigger, as whole words in any case, spelled exactly as ``trigger_token`` ("Zorabek, a man"
    -> "zorabek, a man"): what a tokenizer that matches only that spelling needs."""
    return _trigger_pattern(trigger_token).sub(trigger_token, text)


def missing_trigger_warning(prompt: str, trigger_token: str) -> str:
    """One line when a prompt drawn with the LoRA does not name the trigger token."""
    if has_trigger(prompt, trigger_token) or not trigger_token.strip():
        return ""
    return (f"prompt {shorten(prompt)!r} does not contain the trigger token {trigger_token!r} — the LoRA may not "
            f"activate; start the prompt with '{trigger_token}, '")


def character_warnings(settings, taxonomy=None) -> list[str]:
    """The lines to warn about the run's character before any work: a trigger token the prompts already use
    as a word, a test prompt without the trigger token."""
    from tools.scoring.taxonomy import load_taxonomy

    taxonomy = taxonomy or load_taxonomy(settings.taxonomy_path())
    vocabulary = [*taxonomy.templates, *(d for ds in taxonomy.categories.values() for d in ds), settings.negative_prompt]
    lines = [common_word_warning(settings.trigger_token, vocabulary)]
    if settings.test_prompt:
        lines.append(missing_trigger_warning(settings.test_prompt, settings.trigger_token))
    return [line for line in lines if line]


def check_saved_analysis(settings):
    """The settings to run with beside the analysis at analysis_path (``adopt_analysis``); ``InputError`` up
    front when it belongs to another trigger token or other pictures — before any folder or file is written."""
    from tools.atomic import read_json_object

    path = Path(settings.analysis_path)
    saved = read_json_object(path)
    return adopt_analysis(saved, path, settings) if saved else settings


def reference_hashes(references: Path) -> list[tuple[str, str]]:
    """(file name, sha256) of every reference picture, in the order the analysis lists them."""
    from tools.images import file_sha256, list_images

    return [(p.name, file_sha256(p)) for p in list_images(references, "references")]


def check_prompts(prompts: Sequence[str], what: str = "prompt") -> list[str]:
    """The prompts stripped, or ``InputError`` naming the first empty or repeated one (a suite prompt, a
    --prompt): an empty prompt draws nothing of the character, a repeated one counts its images twice."""
    cleaned = [str(p).strip() if p is not None else "" for p in prompts]
    seen: dict[str, int] = {}
    for index, prompt in enumerate(cleaned, start=1):
        if not prompt:
            raise InputError(f"{what} {index} is empty", f"give each {what} some text, or leave it out")
        key = " ".join(prompt.lower().split())
        if key in seen:
            raise InputError(f"{what} {index} repeats an earlier one ({what} {seen[key]}: {shorten(prompt)!r})",
                             f"make each {what} different, or leave the repeat out")
        seen[key] = index
    return cleaned


def adopt_analysis(analysis: dict, path: Path, settings):
    """The settings a command runs with beside a saved analysis: a trigger token and name the settings only
    derived (from character.json or the folder's name: no flag, aldar.toml or ALDAR_* gave them) are the
    analysis' — downstream takes them from it; one given that differs is refused (``check_analysis_fits``),
    as are other pictures."""
    adopted = {name: analysis[name] for name in ("trigger_token", "character_name")
               if name in settings.derived and isinstance(analysis.get(name), str) and analysis[name].strip()}
    settings = settings.replace(**adopted) if adopted else settings
    check_analysis_fits(analysis, path, settings.trigger_token, reference_hashes(Path(settings.references)),
                        Path(settings.references))
    return settings


def check_analysis_fits(analysis: dict, path: Path, trigger_token: str, reference_hashes: list[tuple[str, str]],
                        references: Path) -> None:
    """``InputError`` when a saved analysis was made for another trigger token or other reference pictures
    than the run's: its captions and key features would be mixed with this character's."""
    saved = analysis.get("trigger_token")
    if saved is not None and saved != trigger_token:
        raise InputError(f"analysis {path} was made for trigger token {saved!r}, this run uses {trigger_token!r}",
                         f"pass --trigger-token {saved}, or rerun `aldar analyze --trigger-token {trigger_token}` "
                         f"(it replaces {path.name}), or use another --output-dir")
    try:
        saved_refs = [(r["file"], r["sha256"]) for r in analysis["references"]]
    except (KeyError, TypeError):
        return  # an analysis without its references' hashes (hand-written): nothing to compare
    if saved_refs != reference_hashes:
        made_from = analysis.get("reference_dir") or f"{len(saved_refs)} other pictures"
        if Path(made_from).expanduser().resolve() == Path(references).expanduser().resolve():
            change = f"{len(saved_refs)} pictures that have changed since (now {len(reference_hashes)})"
            raise InputError(f"analysis {path} was made from {references} when it held {change}",
                             f"rerun `aldar analyze --references {references}` (it replaces {path.name}), "
                             "or use another --output-dir")
        raise InputError(f"analysis {path} was made from the references in {made_from}, this run's are "
                         f"{references} (the pictures differ)",
                         f"pass --references {made_from}, or rerun `aldar analyze --references {references}` "
                         f"(it replaces {path.name}), or use another --output-dir")


def shorten(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
