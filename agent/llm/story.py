"""Illustrated stories of the character: the LLM writes a short tale as scenes, a generator draws each scene.

As in the original project, the story comes from Deepseek (any OpenAI-compatible endpoint works:
``agent.llm.client.make_client``). The model must answer with JSON
``{"title": str, "scenes": [{"text": str, "image_prompt": str}, ...]}`` (3–6 scenes); a reply that
is not valid gets one retry carrying the error, then a ``ProviderError``. Each scene's
picture comes from the local LoRA, the bare base model, or a hosted provider, with the
trigger token in front of the prompt. The book lands in ``<output_dir>/stories/<timestamp>_<slug>/``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.llm.client import make_client, provider_error, thinking_extra_body
from agent.llm.prompts import load_prompt
from tools.atomic import read_json_object, unused_path
from tools.errors import ConfigError, InputError, ProviderError
from tools.generation.storybook import write_storybook
from tools.secrets import redact
from tools.settings import Settings, read_character_card
from tools.timestamps import iso_timestamp, timestamp

if TYPE_CHECKING:  # `aldar story --help` lists GENERATORS without loading the openai package
    import openai

MIN_SCENES, MAX_SCENES = 3, 6
LOCAL_GENERATORS = ("lora", "base")
HOSTED_GENERATORS = ("freepik", "deepai", "gemini")
GENERATORS = LOCAL_GENERATORS + HOSTED_GENERATORS


class StoryFormatError(ValueError):
    """The model's reply is not the story JSON we asked for (the message goes back to the model)."""


@dataclass
class Storybook:
    folder: Path
    story: dict[str, Any]
    files: dict[str, Path]
    notes: list[str]  # scenes left without a picture, fast mode without its adapter...


# --------------------------------------------------------------------------- the text
def parse_story(reply: str, scenes_wanted: int | None = None) -> dict[str, Any]:
    """Validate the model's reply into ``{"title", "scenes": [{"text", "image_prompt"}]}``.

    Tolerates ```json fences and chatter around the object. Extra scenes beyond
    ``scenes_wanted`` are dropped; fewer than 3 or more than 6 is an error.
    """
    text = (reply or "").strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL | re.IGNORECASE)
    if fenced:
        text = fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise StoryFormatError("the reply holds no JSON object")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise StoryFormatError(f"invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise StoryFormatError("the JSON is not an object")
    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        raise StoryFormatError('"title" must be a non-empty string')
    scenes = data.get("scenes")
    if not isinstance(scenes, list):
        raise StoryFormatError('"scenes" must be a list')
    if not MIN_SCENES <= len(scenes) <= MAX_SCENES:
        raise StoryFormatError(f'"scenes" has {len(scenes)} items; it needs {MIN_SCENES} to {MAX_SCENES}')
    cleaned = []
    for number, scene in enumerate(scenes, start=1):
        if not isinstance(scene, dict):
            raise StoryFormatError(f"scene {number} is not an object")
        for key in ("text", "image_prompt"):
            if not isinstance(scene.get(key), str) or not scene[key].strip():
                raise StoryFormatError(f'scene {number} needs a non-empty string "{key}"')
        cleaned.append({"text": scene["text"].strip(), "image_prompt": " ".join(scene["image_prompt"].split())})
    if scenes_wanted:
        cleaned = cleaned[:max(scenes_wanted, MIN_SCENES)]
    return {"title": " ".join(title.split()), "scenes": cleaned}


def character_description(settings: Settings) -> str:
    """Who the tale's hero is, for the writer: the ``description`` of the references' character.json, else the
    key features the saved analysis found, else only that the pictures show them — never another character's."""
    card = read_character_card(settings.references) if Path(settings.references).expanduser().is_dir() else {}
    if card.get("description"):
        return card["description"]
    analysis = read_json_object(Path(settings.analysis_path).expanduser()) or {}
    traits = [trait for trait in analysis.get("key_features") or [] if isinstance(trait, str)]
    if traits:
        return "who looks like this in every picture: " + ", ".join(traits)
    return "the hero of the reader's reference pictures"


def write_story(settings: Settings, prompt: str, scenes: int = 4, *, client: openai.OpenAI | None = None,
                model: str | None = None) -> dict[str, Any]:
    """Ask the LLM for the tale; one retry with the validation error when the reply is unusable."""
    import openai  # here, not at the top: `aldar story --help` and the chat never need the client library

    if client is None:
        client, model = make_client(settings)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": load_prompt("story", character=settings.character_name,
                                                  description=character_description(settings), scenes=scenes)},
        {"role": "user", "content": prompt},
    ]
    extra_body = thinking_extra_body(str(client.base_url), settings.llm_thinking)
    last_error = ""
    for attempt in (1, 2):
        try:
            response = client.chat.completions.create(model=model or settings.llm_model, messages=messages,
                                                      response_format={"type": "json_object"},
                                                      extra_body=extra_body)
        except openai.OpenAIError as exc:
            raise provider_error(exc, settings.llm_timeout_s) from None
        reply = (response.choices[0].message.content or "") if response.choices else ""
        reply = redact(reply, [getattr(client, "api_key", None)])  # a model or proxy can echo the key
        try:
            story = parse_story(reply, scenes)
            story["attempts"] = attempt
            return story
        except StoryFormatError as exc:
            last_error = str(exc)
            messages += [{"role": "assistant", "content": reply},
                         {"role": "user", "content": load_prompt("story_retry", error=exc, scenes=scenes)}]
    raise ProviderError(f"the LLM's story was unusable twice ({last_error})",
                        "run the command again, or try another model (llm_model in aldar.toml)")


# --------------------------------------------------------------------------- the pictures
def scene_prompt(settings: Settings, image_prompt: str) -> str:
    """The generator's prompt for a scene: the trigger token first, so the LoRA draws its character."""
    token = settings.trigger_token.strip()
    if token and not image_prompt.lower().startswith(token.lower()):
        return f"{token}, {image_prompt}"
    return image_prompt


def find_latest_lora(settings: Settings) -> Path | None:
    """The newest ``pytorch_lora_weights.safetensors`` under the results folder, if any."""
    from tools.generation.local import find_newest_lora

    return find_newest_lora(settings.output_dir)


def _check_generator(settings: Settings, generator: str, lora_path: Path | None):
    """Everything about the illustrator that can fail, checked before the LLM is called."""
    if generator not in GENERATORS:
        raise InputError(f"unknown generator {generator!r}", f"use one of: {', '.join(GENERATORS)}")
    if generator == "lora":
        from tools.generation.local import resolve_lora_file

        lora_path = lora_path or find_latest_lora(settings)
        if lora_path is None:
            raise InputError(f"no trained LoRA found in {settings.output_dir}",
                             "run `aldar train` first, pass --lora PATH, or draw with --generator base")
        return resolve_lora_file(lora_path)
    if generator in HOSTED_GENERATORS:
        from tools.providers import configured_providers

        ready, skipped = configured_providers(settings, [generator])
        if not ready:
            problem, _, fix = skipped[0].partition(" — ")
            raise ConfigError(problem, fix or "set the provider's API key in .env")
        return ready[0]
    return None


def illustrate(settings: Settings, story: dict[str, Any], book_dir: Path, generator: str, illustrator,
               quiet: bool = False) -> list[str]:
    """Draw every scene into ``book_dir/images``; sets each scene's ``prompt``, ``image``, ``seed``.

    Returns notes for the user: scenes a provider left without a picture, LCM without its adapter.
    """
    prompts = [scene_prompt(settings, scene["image_prompt"]) for scene in story["scenes"]]
    images_dir = book_dir / "images"
    notes: list[str] = []
    if generator in LOCAL_GENERATORS:
        from tools.generation.local import LCM_NOT_APPLIED, generate_local
        from tools.generation.sampling import SamplingSpec
        from tools.models import resolve_profile

        profile = resolve_profile(settings)
        one_per_scene = replace(SamplingSpec.from_settings(settings), images_per_prompt=1)
        results = generate_local(profile, prompts, images_dir, one_per_scene, lora_path=illustrator, name=generator,
                                 quiet=quiet)
        story.update(profile.describe())
        if any(r.metadata.get("lcm_lora") == LCM_NOT_APPLIED for r in results):
            notes.append(f"fast mode: LCMScheduler at {results[0].metadata['steps']} steps; the LCM-LoRA adapter was "
                         "not applied (the tiny profile has none)")
    else:
        from tools.providers import generate_with_provider

        results = generate_with_provider(illustrator, prompts, images_dir, 1, settings.seed, skipped=notes,
                                         quiet=quiet)
    unused = list(results)
    for number, (scene, prompt) in enumerate(zip(story["scenes"], prompts), start=1):
        scene["prompt"] = prompt
        match = next((r for r in unused if r.prompt == prompt), None)
        if match is None:
            scene.update(image=None, seed=None, image_error="the generator returned no picture for this scene")
            continue
        unused.remove(match)
        scene.update(image=match.path.relative_to(book_dir).as_posix(), seed=match.seed)
    return notes


# --------------------------------------------------------------------------- the whole book
def create_storybook(settings: Settings, prompt: str, *, generator: str = "lora", lora_path: Path | None = None,
                     scenes: int = 4, quiet: bool = False, client: openai.OpenAI | None = None,
                     model: str | None = None) -> Storybook:
    """Story from the LLM → pictures → ``story.json`` / ``story.md`` / ``index.html`` in a new book folder."""
    prompt = " ".join((prompt or "").split())
    if not prompt:
        raise InputError("the story prompt is empty", 'say what the tale is about, e.g. aldar story "Aldar tricks the bai"')
    if not MIN_SCENES <= scenes <= MAX_SCENES:
        raise InputError(f"--scenes {scenes} is out of range", f"ask for {MIN_SCENES} to {MAX_SCENES} scenes")
    if client is None:
        client, model = make_client(settings)  # no key → ConfigError naming the variables, before any work
    illustrator = _check_generator(settings, generator, lora_path)

    story = write_story(settings, prompt, scenes, client=client, model=model)
    created = timestamp()
    book_dir = unused_path(Path(settings.output_dir) / "stories" / f"{created}_{_slug(prompt)}")
    book_dir.mkdir(parents=True)
    story = {"title": story["title"], "prompt": prompt, "generator": generator,
             "lora_path": str(illustrator) if generator == "lora" else None,
             "llm_model": model or settings.llm_model, "llm_attempts": story["attempts"],
             "created_at": iso_timestamp(), "scenes": story["scenes"]}
    notes = illustrate(settings, story, book_dir, generator, illustrator, quiet=quiet)
    if notes:
        story["notes"] = notes
    files = write_storybook(book_dir, story)
    return Storybook(book_dir, story, files, notes)


def _slug(text: str, limit: int = 40) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()  # "Köse" → "kose"
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "story"

