"""A storybook folder from a finished story: ``story.json``, ``story.md`` and ``index.html``.

The story dict (written by ``agent.llm.story``) holds ``title``, ``prompt`` and ``scenes``, each
scene with ``text``, ``image_prompt`` and ``image`` (a path relative to the book folder, or
None when the generator returned nothing for it). Pages open offline: images are referenced
by relative paths, nothing is fetched, and every piece of model text is HTML-escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tools.atomic import atomic_write_json, atomic_write_text
from tools.errors import InputError

_STYLE = """
body { font-family: Georgia, serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #2b2118;
       background: #fdf8ef; line-height: 1.55; }
h1 { text-align: center; color: #8a3b12; }
.scene { margin: 2.5rem 0; }
.scene img { display: block; width: 100%; max-width: 32rem; margin: 0 auto 1rem; border-radius: 8px;
             image-rendering: auto; box-shadow: 0 2px 8px rgba(0,0,0,.2); }
.missing { text-align: center; color: #8d7a66; font-style: italic; }
footer { margin-top: 3rem; font-size: .85rem; color: #8d7a66; border-top: 1px solid #e3d6c3; padding-top: .5rem; }
"""


def render_markdown(story: dict[str, Any]) -> str:
    """The story as Markdown: title, then each scene's picture and text."""
    lines = [f"# {story['title']}", ""]
    for number, scene in enumerate(story["scenes"], start=1):
        if scene.get("image"):
            alt = scene["image_prompt"].replace("[", "(").replace("]", ")").replace("\n", " ")
            lines += [f"![{alt}](<{scene['image']}>)", ""]
        else:
            lines += [f"*(scene {number}: no picture — {scene.get('image_error') or 'the generator returned none'})*", ""]
        lines += [scene["text"].strip(), ""]
    lines += ["---", _credit(story), ""]
    return "\n".join(lines)


def render_html(story: dict[str, Any]) -> str:
    """A self-contained HTML page (inline CSS, relative image paths, escaped text)."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(story['title'])}</title>", f"<style>{_STYLE}</style>", "</head>", "<body>",
             f"<h1>{esc(story['title'])}</h1>"]
    for number, scene in enumerate(story["scenes"], start=1):
        parts.append(f'<section class="scene" id="scene-{number}">')
        if scene.get("image"):
            src = quote(scene["image"], safe="/")
            parts.append(f'<img src="{esc(src)}" alt="{esc(scene["image_prompt"])}">')
        else:
            reason = scene.get("image_error") or "the generator returned none"
            parts.append(f'<p class="missing">(no picture: {esc(reason)})</p>')
        for paragraph in [p for p in scene["text"].split("\n") if p.strip()]:
            parts.append(f"<p>{esc(paragraph.strip())}</p>")
        parts.append("</section>")
    parts += [f"<footer>{esc(_credit(story))}</footer>", "</body>", "</html>", ""]
    return "\n".join(parts)


def write_storybook(book_dir: Path, story: dict[str, Any]) -> dict[str, Path]:
    """Write ``story.json``, ``story.md`` and ``index.html`` into ``book_dir`` (atomically); return their paths."""
    book_dir = Path(book_dir)
    for scene in story["scenes"]:  # a reference to a missing file would show as a broken picture
        if scene.get("image") and not (book_dir / scene["image"]).is_file():
            raise InputError(f"scene image {scene['image']} is not in {book_dir}",
                             "write the pictures into the book folder before the pages")
    return {"json": atomic_write_json(book_dir / "story.json", story),
            "markdown": atomic_write_text(book_dir / "story.md", render_markdown(story)),
            "html": atomic_write_text(book_dir / "index.html", render_html(story))}


def _credit(story: dict[str, Any]) -> str:
    credit = f"Written by {story.get('llm_model', 'an LLM')}, illustrated by {story.get('generator', 'a generator')}"
    if story.get("profile") == "tiny":
        credit += " (tiny profile: small models of a bundled toy world, not real SDXL)"
    return credit + "."
