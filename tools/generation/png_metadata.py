"""Generation parameters inside PNG files, the way AUTOMATIC1111's web UI writes them.

Two text chunks:

* ``parameters``: A1111's plain-text form, so the picture opens with its settings in
  A1111, ComfyUI, Civitai and friends::

      <prompt>
      Negative prompt: <negative>
      Steps: 30, Sampler: Euler, CFG scale: 7.0, Seed: 42, Size: 64x64, Model: <base>, Lora: lora:1.0

* ``aldar``: the same data as JSON, plus the model profile (tiny runs carry their notice).

``read_generation_parameters`` parses both back; what ``format_parameters`` writes,
``parse_parameters`` returns unchanged (values with commas are quoted as A1111 does).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from tools.atomic import atomic_write
from tools.errors import InputError
from tools.secrets import redact

PARAMETERS_CHUNK = "parameters"
ALDAR_CHUNK = "aldar"
NEGATIVE_PREFIX = "Negative prompt: "

# canonical key -> A1111 label, in the order A1111 writes them; other keys follow as "Title case".
_LABELS = {"steps": "Steps", "sampler": "Sampler", "cfg_scale": "CFG scale", "seed": "Seed", "size": "Size",
           "model": "Model", "lora": "Lora"}
_INT_KEYS = {"steps", "seed"}
_FLOAT_KEYS = {"cfg_scale", "lora_scale"}
# A1111's own pattern for one "Label: value" pair; a value is either "quoted" or runs to the next comma.
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def format_parameters(params: dict[str, Any]) -> str:
    """A1111 ``parameters`` text from a flat dict.

    Keys: ``prompt``, ``negative_prompt``, ``steps``, ``sampler``, ``cfg_scale``, ``seed``,
    ``width``/``height`` (written as ``Size``), ``model``, ``lora_name``/``lora_scale``
    (written as ``Lora: name:scale``); any other key is written as an extra field.
    """
    fields = dict(params)
    prompt = str(fields.pop("prompt", ""))
    negative = str(fields.pop("negative_prompt", ""))
    if "width" in fields and "height" in fields:
        fields["size"] = f"{fields.pop('width')}x{fields.pop('height')}"
    if "lora_name" in fields:
        fields["lora"] = f"{fields.pop('lora_name')}:{fields.pop('lora_scale', 1.0)}"
    ordered = [k for k in _LABELS if k in fields] + [k for k in fields if k not in _LABELS]
    pairs = ", ".join(f"{_label(k)}: {_quote(fields[k])}" for k in ordered)
    lines = [prompt]
    if negative:
        lines.append(NEGATIVE_PREFIX + negative)
    lines.append(pairs)
    return "\n".join(lines)


def parse_parameters(text: str) -> dict[str, Any]:
    """The inverse of ``format_parameters`` (also reads A1111's own files: unknown labels become snake_case keys)."""
    lines = text.strip("\n").split("\n")
    last = lines[-1] if lines else ""
    if len(_PAIR.findall(last)) < 3:  # no settings line: the whole text is prompt
        lines.append("")
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines[:-1]:
        if line.startswith(NEGATIVE_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PREFIX):]
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"prompt": "\n".join(prompt_lines), "negative_prompt": "\n".join(negative_lines)}
    for label, raw in _PAIR.findall(lines[-1]):
        value = _unquote(raw.strip())
        key = _key(label.strip())
        if key == "size" and re.fullmatch(r"\d+x\d+", value):
            width, height = value.split("x")
            result["width"], result["height"] = int(width), int(height)
        elif key == "lora" and ":" in value:
            name, _, scale = value.rpartition(":")
            result["lora_name"], result["lora_scale"] = name, _number(scale, float)
        elif key in _INT_KEYS:
            result[key] = _number(value, int)
        elif key in _FLOAT_KEYS:
            result[key] = _number(value, float)
        else:
            result[key] = value
    return result


def save_png_with_parameters(image: Image.Image, path: Path, params: dict[str, Any],
                             details: dict[str, Any] | None = None) -> Path:
    """Write ``image`` atomically with the ``parameters`` chunk and an ``aldar`` JSON chunk (params + details)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_CHUNK, redact(format_parameters(params)))  # prompts can come from a model
    info.add_text(ALDAR_CHUNK, redact(json.dumps({**params, **(details or {})}, ensure_ascii=False, default=str)))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def read_generation_parameters(path: str | Path) -> dict[str, Any]:
    """The parsed ``parameters`` chunk, with the ``aldar`` JSON chunk (when present) under ``"aldar"``."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            chunks = dict(getattr(image, "text", {}) or {})
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}", "give the path of a PNG written by aldar or A1111") from None
    if PARAMETERS_CHUNK not in chunks:
        raise InputError(f"{path} has no generation parameters", "only images generated with aldar or A1111 carry them")
    result = parse_parameters(chunks[PARAMETERS_CHUNK])
    if ALDAR_CHUNK in chunks:
        try:
            result[ALDAR_CHUNK] = json.loads(chunks[ALDAR_CHUNK])
        except json.JSONDecodeError:
            pass  # a foreign or damaged chunk; the A1111 text is still valid
    return result


def _label(key: str) -> str:
    return _LABELS.get(key) or key.replace("_", " ").capitalize()


def _key(label: str) -> str:
    for key, known in _LABELS.items():
        if known == label:
            return key
    return re.sub(r"[ \-/]+", "_", label).lower()


def _quote(value: Any) -> str:
    text = str(value)
    # A1111 quotes values that would otherwise break the comma/colon split.
    if any(ch in text for ch in ',:"\n') and not re.fullmatch(r"[^,\"\n]*:[-\d.e]+", text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text[1:-1]
    return text


def _number(text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        return text
