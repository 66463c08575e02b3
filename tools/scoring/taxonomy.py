"""The feature taxonomy: categories of competing text descriptions plus prompt templates.

File format (JSON)::

    {"templates": ["a picture of a character with {}", "{}"],
     "categories": {"face_shape": ["round face", "oval face"], ...}}

Within a category the descriptions compete (softmax), so each category needs at
least two. Every description is a feature name in the analysis and the scores,
so names must be unique across the whole taxonomy. ``templates`` is optional
(default ``["{}"]``); each template must hold ``{}`` where the description goes. ``context`` is optional: the
categories a new scene changes (``["background", "style"]``), which the prompt suite varies
(``tools.scoring.suite``); the other categories are the character's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.atomic import read_json
from tools.errors import InputError

DEFAULT_TEMPLATES = ("{}",)


@dataclass(frozen=True)
class Taxonomy:
    path: str
    templates: tuple[str, ...]
    categories: dict[str, list[str]]
    # The categories a new scene changes (background, style …): the prompt suite varies them and keeps the
    # others as the character's identity. Empty: tools.scoring.suite.DEFAULT_CONTEXT's the taxonomy has.
    context: tuple[str, ...] = ()

    def fill(self, description: str) -> list[str]:
        """Every template with ``{}`` replaced by ``description`` (replace, not format: other braces stay)."""
        return [template.replace("{}", description) for template in self.templates]

    def category_of(self, feature: str) -> str:
        for category, descriptions in self.categories.items():
            if feature in descriptions:
                return category
        raise KeyError(feature)

    def as_dict(self) -> dict[str, Any]:
        data = {"path": self.path, "templates": list(self.templates),
                "categories": {name: list(items) for name, items in self.categories.items()}}
        if self.context:
            data["context"] = list(self.context)
        return data


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and validate a taxonomy file; any problem raises ``InputError`` naming the file and the entry."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"taxonomy file {path} does not exist",
                         "pass --taxonomy FILE, or drop the flag to use the bundled Aldar Köse taxonomy")
    try:
        data = read_json(path)
    except ValueError as exc:  # also not UTF-8, or nested too deeply
        raise InputError(f"taxonomy {path} is not valid JSON ({exc})",
                         'fix the syntax; the format is {"templates": [...], "categories": {"name": ["a", "b"]}}') from None
    return taxonomy_from_dict(data, str(path))


def taxonomy_from_dict(data: Any, source: str) -> Taxonomy:
    """Validate an already-parsed taxonomy (``source`` names it in errors)."""
    if not isinstance(data, dict):
        raise InputError(f"taxonomy {source} must be a JSON object, not {type(data).__name__}",
                         'write it as {"templates": [...], "categories": {"name": ["a", "b"]}}')
    templates = data.get("templates", list(DEFAULT_TEMPLATES))
    if not isinstance(templates, list) or not templates:
        raise InputError(f"taxonomy {source}: \"templates\" must be a non-empty list of strings",
                         'e.g. "templates": ["an illustration showing {}", "{}"], or remove the key to use "{}"')
    for index, template in enumerate(templates):
        if not isinstance(template, str) or "{}" not in template:
            raise InputError(f"taxonomy {source}: template #{index + 1} {template!r} has no \"{{}}\" placeholder",
                             'put {} where the feature description goes, e.g. "a picture of {}"')
    categories = data.get("categories")
    if not isinstance(categories, dict) or not categories:
        raise InputError(f"taxonomy {source}: \"categories\" is missing or empty",
                         'add "categories": {"face_shape": ["round face", "oval face"], ...}')
    seen: dict[str, tuple[str, str]] = {}  # normalised description → (as written, category)
    clean: dict[str, list[str]] = {}
    for name, descriptions in categories.items():
        if not name.strip():
            raise InputError(f"taxonomy {source}: a category has an empty name", "give every category a name")
        if not isinstance(descriptions, list) or not all(isinstance(d, str) and d.strip() for d in descriptions):
            raise InputError(f"taxonomy {source}: category {name!r} must be a list of non-empty strings",
                             f'write it as "{name}": ["first description", "second description"]')
        if len(descriptions) < 2:
            state = "is empty" if not descriptions else f"has a single description ({descriptions[0]!r})"
            raise InputError(f"taxonomy {source}: category {name!r} {state}",
                             "give it at least two competing descriptions (probabilities are a softmax within "
                             "the category), or remove the category")
        stripped = [d.strip() for d in descriptions]
        for description in stripped:
            # "round face" and "ROUND FACE " are one feature to CLIP and to a reader: compare them as such.
            key = " ".join(description.split()).casefold()
            if key in seen:
                first, category = seen[key]
                same = "" if first == description else f" (as {first!r}: only case or spaces differ)"
                raise InputError(f"taxonomy {source}: description {description!r} appears in category "
                                 f"{category!r}{same} and again in {name!r}",
                                 "feature names must be unique: reword or remove one of them")
            seen[key] = (description, name)
        clean[name] = stripped
    context = data.get("context", [])
    if not isinstance(context, list) or not all(isinstance(c, str) for c in context):
        raise InputError(f"taxonomy {source}: \"context\" must be a list of category names",
                         'e.g. "context": ["background", "style"], or remove the key')
    unknown = [c for c in context if c not in clean]
    if unknown:
        raise InputError(f"taxonomy {source}: context category {unknown[0]!r} is not one of its categories",
                         f"use some of: {', '.join(clean)}")
    return Taxonomy(path=source, templates=tuple(templates), categories=clean, context=tuple(context))
