"""report.html: one self-contained page per results folder that opens offline.

What a reader wants first comes first: who won each round and by how much (in words), the score
chart, the references; then per round its scores beside the reference ceiling, the decision and
the images large enough to judge, each captioned with its prompt and seed and opening full size on a
click (a CSS ``:target`` lightbox: no JavaScript, no CDN). All links are relative to the results
folder, so it can be zipped and moved. ``score_chart.png`` is the chart as a picture file.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from agent.rounds.documents import Round, RoundTrain, rounds_of
from agent.rounds.knobs import params_items
from agent.views.chart import draw_score_chart, score_chart_svg, steps_chart_svg
from agent.views.render import (CHOSEN, adjustments_text, checkpoint_choice, compute_text, prompt_note, record_ceiling_note,
                                record_scores, round_verdict, suite_prompt_title, suite_scores)
from tools.atomic import atomic_write_bytes, atomic_write_text
from tools.errors import InputError
from tools.generation.png_metadata import read_generation_parameters
from tools.images import list_images, load_image
from tools.scoring.copies import MEMORISED

if TYPE_CHECKING:
    from agent.rounds.session import Session
    from agent.rounds.store import HistoryState

REFERENCE_SIZE = 256  # the references' copies in report_assets/ (shown at 160 px: sharp on dense screens)
SHOT = 224  # px an image of a round is shown at; smaller sources are scaled up pixelated, not blurred
SUITE_SHOT = 96  # px of a suite image: up to 8 per generator and prompt side by side


class ReportWriter:
    """Listens to a ``Session``'s ``on_round_recorded``: (re)writes report.html and score_chart.png whenever its
    history changed. ``written`` is the page this process wrote (None before: never a path that may not exist)."""

    def __init__(self) -> None:
        self.written: Path | None = None

    def __call__(self, session: Session) -> None:
        self.written = write_report(session.store, session.references, session.history())


def write_report(store, references: Path, history: list[Round]) -> Path:
    """(Re)write ``report.html`` and ``score_chart.png`` of ``store`` from its history."""
    root = store.root
    reference_thumbs = _reference_thumbnails(references, root / "report_assets")
    atomic_write_bytes(store.chart_path, _png_bytes(draw_score_chart(history)))
    page = render_html(history, store.state, [p.relative_to(root).as_posix() for p in reference_thumbs],
                       store.chart_path.name, root)
    return atomic_write_text(store.report_path, page)


def _reference_thumbnails(references: Path, folder: Path) -> list[Path]:
    """Small copies of the references inside the results folder (the page must not point outside it)."""
    thumbs = []
    for path in list_images(references):
        target = folder / f"reference_{path.stem}.png"
        if not target.is_file() or target.stat().st_mtime < path.stat().st_mtime:
            image = load_image(path)
            image.thumbnail((REFERENCE_SIZE, REFERENCE_SIZE))
            atomic_write_bytes(target, _png_bytes(image))
        thumbs.append(target)
    return thumbs


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------ page
def render_html(history: list[Round], state: HistoryState, reference_thumbs: list[str], chart: str,
                root: Path | None = None) -> str:
    """The page; ``root`` (the results folder) lets it read each image's prompt, seed and size."""
    history = rounds_of(history)
    esc = html.escape
    profile, best = state.profile, state.best_round
    lightboxes: list[str] = []
    parts = [_HEAD, '<header><h1>aldar — LoRA training rounds</h1>']
    if profile.get("profile") == "tiny":
        parts.append(f'<p class="notice"><strong>Toy world, not real SDXL.</strong> {esc(profile.get("notice", ""))}</p>')
    parts.append(f'<p class="summary">{_summary(history, state)}</p>')
    parts.append(f"<p class=\"meta\">models: {esc(str(profile.get('base_model', '?')))} · scorer "
                 f"{esc(str(profile.get('clip_model', '?')))} · {esc(str(profile.get('device', '?')))}</p>")
    parts.append(_not_competing(history))
    parts.append("</header>")
    parts.append('<section class="overview">')
    if history:
        verdicts = "".join(f'<li><a href="#round-{r.round}">Round {r.round}</a>: '
                           f'{esc(round_verdict(r) or "not scored.")}</li>' for r in history)
        parts.append(f'<div class="chart-box"><h2>Score per round</h2>{score_chart_svg(history)}'
                     f'<p class="meta">The y axis spans the scores, not 0–1. Also as a picture: '
                     f'<a href="{esc(chart)}">{esc(chart)}</a></p><ul class="verdicts">{verdicts}</ul>'
                     f'{_steps_chart(history)}</div>')
    shots = "".join(_reference_figure(src, index, root, lightboxes) for index, src in enumerate(reference_thumbs))
    parts.append(f'<div><h2>References</h2><div class="gallery references">{shots}</div></div>')
    parts.append("</section>")
    for index, record in enumerate(history):
        previous = history[index - 1] if index else None
        parts.append(_round_section(record, previous, record.round == best, root, lightboxes))
    parts += lightboxes
    parts.append("</body></html>\n")
    return "\n".join(part for part in parts if part)


def _steps_chart(history: list[Round]) -> str:
    """Did the rounds pay? Quality against the training steps spent, beside one run's curve, and the total."""
    svg = steps_chart_svg(history)
    if not svg:
        return ""
    total = sum(r.train.steps or 0 for r in history)
    seconds = sum(r.train.seconds or 0.0 for r in history)
    return (f'<h2>Quality per training step</h2>{svg}<p class="meta">Every scored checkpoint of the rounds at the '
            f'optimiser steps spent to reach it ({total} steps, {seconds:.0f} s of training in all); dashed: round 1 '
            'alone, the first steps of one plain run. A round pays when its checkpoints rise above what one run '
            'reached for the same steps, beyond the spread of their images.</p>')


def _summary(history: list[Round], state: HistoryState) -> str:
    esc = html.escape
    best = state.best_round
    record = next((r for r in history if r.round == best), None)
    count = len(history)
    text = f"{count} round{'' if count == 1 else 's'}; best round: "
    if record is not None and record.lora_score is not None:
        text += f"{best} (LoRA {record.lora_score:.3f})"
    else:
        text += "—" if best is None else str(best)
    if state.stopped is not None and state.stopped.reason:
        text += f"; stopped: {state.stopped.reason}"
    summary = esc(text)
    if state.best_lora:
        summary += f'; best LoRA: <a href="{esc(state.best_lora)}">{esc(state.best_lora)}</a>'
    return summary


def _not_competing(history: list[Round]) -> str:
    """The competitors that sat out, once for the whole report (each reason with its rounds unless all)."""
    sat_out: dict[str, list[int]] = {}
    for record in history:
        for reason in record.skipped_competitors:
            sat_out.setdefault(reason, []).append(record.round)
    if not sat_out:
        return ""
    every = len(history)
    items = "".join(f"<li>{html.escape(reason)}"
                    + ("" if len(numbers) == every else f" (round{'s' if len(numbers) > 1 else ''} "
                                                        f"{', '.join(map(str, numbers))})") + "</li>"
                    for reason, numbers in sat_out.items())
    return f'<div class="meta not-competing"><strong>Not competing:</strong><ul>{items}</ul></div>'


def _round_section(record: Round, previous: Round | None, is_best: bool, root: Path | None,
                   lightboxes: list[str]) -> str:
    esc = html.escape
    number = record.round
    badge = ' <span class="badge">best round</span>' if is_best else ""
    verdict = round_verdict(record)
    notes = [note for note in (prompt_note(record, previous), record_ceiling_note(record)) if note]
    scores = record_scores(record)
    rows = [('<tr class="copy">' if row[-1] == MEMORISED else "<tr>")
            + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in scores.rows]
    if scores.ceiling:
        rows.append('<tr class="ceiling">' + "".join(f"<td>{esc(cell)}</td>" for cell in scores.ceiling) + "</tr>")
    params = "".join(f"<code>{esc(name)}: {esc(value)}</code> " for name, value in params_items(record.params))
    changes = adjustments_text(record.decision.adjustments, record.params)
    clamped = record.decision.clamped
    facts = [
        '<div class="table-wrap"><table class="scores"><tr>' + "".join(f"<th>{esc(column)}</th>" for column in scores.columns)
        + "</tr>", *rows, "</table></div>", *(f'<p class="meta">{esc(note)}</p>' for note in notes),
        f"<p><strong>Decision ({esc(record.decided_by)}):</strong> {esc(record.rationale)}</p>",
        f'<p class="meta">next round: {esc(changes)}</p>',
        f'<p class="meta">clamped: {esc("; ".join(map(str, clamped)))}</p>' if clamped else "",
        f'<p class="params"><span class="meta">parameters:</span> {params}</p>',
        *(f'<p class="meta">prompt: {esc(prompt)}</p>' for prompt in record.prompts),
        *(f'<p class="meta">base model\'s prompt (without the emphasis): {esc(prompt)}</p>'
          for prompt in record.base_prompts if record.base_prompts != record.prompts),
        f'<p class="meta compute">{esc(compute_text(record))}</p>' if compute_text(record) else "",
        _checkpoint_choice(record.train),
        _suite_table(record),
    ]
    galleries = []
    for name, paths in record.paths.images.items():
        shots = "".join(_shot(path, f"r{number}-{name}-{index}", name, record, root, lightboxes)
                        for index, path in enumerate(paths))
        count = len(paths)
        galleries.append(f'<h3>{esc(name)} <span class="meta">{count} image{"" if count == 1 else "s"}</span></h3>'
                         f'<div class="gallery">{shots}</div>')
    galleries.append(_suite_galleries(record, root, lightboxes))
    return "\n".join([
        f'<section class="round" id="round-{number}">',
        f"<h2>Round {number}{badge}</h2>",
        f'<p class="verdict">{esc(verdict)}</p>' if verdict else "",
        '<div class="round-body"><div class="facts">', *facts, "</div>",
        '<div class="images">', *galleries, "</div></div></section>",
    ])


def _suite_table(record: Round) -> str:
    """The round's identity, editability and bleed on its prompt suite: the LoRA beside the base and the ceiling."""
    table = suite_scores(record)
    if table is None:
        return ""
    esc = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    head = "".join(f"<th>{esc(column)}</th>" for column in table.columns)
    return (f'<h3>{esc(table.title)}</h3><div class="table-wrap"><table class="suite"><tr>{head}</tr>{rows}</table>'
            f'</div><p class="meta">{esc(table.caption or "")}</p>')


def _suite_galleries(record: Round, root: Path | None, lightboxes: list[str]) -> str:
    """The suite's images grouped by prompt: per prompt what it asks, then the LoRA's and the base's images."""
    suite = record.suite
    if suite is None or not suite.images:
        return ""
    esc = html.escape
    number = record.round
    blocks = []
    for index, prompt in enumerate(suite.prompts):
        rows = []
        for name, groups in suite.images.items():
            paths = groups[index] if index < len(groups) else []
            shots = "".join(_shot(path, f"r{number}-suite{index}-{name}-{k}", name, record, root, lightboxes,
                                  size=SUITE_SHOT) for k, path in enumerate(paths))
            rows.append(f'<div class="suite-row"><span class="meta">{esc(name)}</span><div class="gallery">{shots}</div></div>')
        blocks.append(f'<div class="suite-prompt"><h4>{esc(suite_prompt_title(prompt))}</h4>'
                      f'<p class="meta">{esc(prompt.text)}</p>{"".join(rows)}</div>')
    return f'<h3>New scenes (prompt suite)</h3>{"".join(blocks)}'


def _shot(path: str, ident: str, generator: str, record: Round, root: Path | None, lightboxes: list[str],
          size: int = 0) -> str:
    """One image of a round: shown at SHOT px (``size`` for the suite's), captioned with its seed and prompt,
    opening full size; the suite's small ones carry their caption in the title and the lightbox only."""
    esc = html.escape
    if size:
        meta = _generation_parameters(root, path)
        seed = f"seed {meta['seed']}" if meta.get("seed") is not None else "seed unknown"
        caption = f"{seed} · {meta.get('prompt', '')}"
        pixelated = " pixelated" if _smaller_than(root, path, size) else ""
        lightboxes.append(_lightbox(ident, path, f"{generator}, round {record.round} · {caption}", pixelated,
                                    f"round-{record.round}"))
        return (f'<a href="#{ident}" title="{esc(caption)}"><img class="{pixelated.strip()}" src="{esc(path)}" '
                f'alt="{esc(generator)}, {esc(caption)}" width="{size}" height="{size}"></a>')
    meta = _generation_parameters(root, path)
    prompt = str(meta.get("prompt") or next(iter(record.prompts), ""))
    seed = f"seed {meta['seed']}" if meta.get("seed") is not None else "seed unknown"
    caption = f"{seed} · {prompt}" if prompt else seed
    pixelated = " pixelated" if _smaller_than(root, path, SHOT) else ""
    lightboxes.append(_lightbox(ident, path, f"{generator}, round {record.round} · {caption}", pixelated,
                                f"round-{record.round}"))
    return (f'<figure class="shot"><a href="#{ident}" title="click to enlarge">'
            f'<img class="{pixelated.strip()}" src="{esc(path)}" alt="{esc(generator)}, {esc(caption)}" '
            f'width="{SHOT}" height="{SHOT}"></a><figcaption><strong>{esc(seed)}</strong>'
            f'{esc(f" · {prompt}" if prompt else "")}</figcaption></figure>')


def _reference_figure(src: str, index: int, root: Path | None, lightboxes: list[str]) -> str:
    esc = html.escape
    name = Path(src).stem.removeprefix("reference_")
    pixelated = " pixelated" if _smaller_than(root, src, 160) else ""
    lightboxes.append(_lightbox(f"ref-{index}", src, f"reference {name}", pixelated, "top"))
    return (f'<figure class="reference"><a href="#ref-{index}" title="click to enlarge">'
            f'<img class="{pixelated.strip()}" src="{esc(src)}" alt="reference {esc(name)}" width="160" height="160">'
            f'</a><figcaption>{esc(name)}</figcaption></figure>')


def _lightbox(ident: str, src: str, caption: str, pixelated: str, back: str) -> str:
    """A full-size view shown while the address ends in ``#ident``; a click anywhere closes it."""
    esc = html.escape
    return (f'<div class="lightbox" id="{ident}"><a class="backdrop" href="#{back}" aria-label="close"></a>'
            f'<figure><a href="{esc(src)}" title="open the file"><img class="{pixelated.strip()}" src="{esc(src)}" '
            f'alt="{esc(caption)}" loading="lazy"></a><figcaption>{esc(caption)} · '
            f'<a href="#{back}">close</a></figcaption></figure></div>')


def _generation_parameters(root: Path | None, path: str) -> dict:
    """Prompt and seed from the PNG's own metadata ({} when the file has none, or no root was given)."""
    if root is None:
        return {}
    try:
        return read_generation_parameters(root / path)
    except InputError:
        return {}


def _smaller_than(root: Path | None, path: str, size: int) -> bool:
    """Whether the image is smaller than it is shown (then it is scaled up with crisp pixels)."""
    if root is None:
        return True
    try:
        with Image.open(root / path) as image:
            return max(image.size) < size
    except OSError:
        return False


def _checkpoint_choice(train: RoundTrain) -> str:
    """Which training checkpoint became the round's LoRA, why, and (folded) every checkpoint's quality."""
    choice = checkpoint_choice(train)
    if choice is None:
        return ""
    esc = html.escape
    rows = [('<tr class="chosen">' if row[-1] == CHOSEN else "<tr>") + "".join(f"<td>{esc(cell)}</td>" for cell in row)
            + "</tr>" for row in choice.rows]
    table = ("<table class=\"checkpoints\"><tr>" + "".join(f"<th>{esc(column)}</th>" for column in choice.columns)
             + "</tr>" + "".join(rows) + "</table>") if rows else ""
    summary = f"<strong>{esc(choice.title)}</strong> — {esc(choice.caption or '')}"
    return f"<details class=\"checkpoint\"><summary>{summary}</summary>{table}</details>" if table else f"<p>{summary}</p>"


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aldar report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 0; padding: 1em 2em 3em; color: #222; line-height: 1.4; }
h1 { margin: .3em 0; } h2 { margin: .6em 0 .4em; } h3 { margin: .8em 0 .3em; font-size: 1em; }
.notice { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }
.meta { color: #666; font-size: .9em; }
.not-competing ul { margin: .2em 0; padding-left: 1.4em; }
.overview { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 2em; align-items: start; }
svg.chart { width: 100%; height: auto; max-height: 60vh; border: 1px solid #eee; }
svg.chart text { font: 15px system-ui, sans-serif; fill: #222; } svg.chart .title { font-size: 17px; font-weight: 600; }
.verdicts { padding-left: 1.2em; }
.round { border-top: 2px solid #ddd; margin-top: 1.5em; }
.badge { background: #2e7d32; color: white; font-size: .6em; padding: .15em .5em; border-radius: 1em; vertical-align: middle; }
.verdict { font-size: 1.15em; font-weight: 600; margin: .2em 0 .6em; }
.round-body { display: grid; grid-template-columns: minmax(34em, 1fr) minmax(0, 1.2fr); gap: 2em; align-items: start; }
.facts { min-width: 0; } .table-wrap { overflow-x: auto; }
@media (max-width: 1100px) { .overview, .round-body { grid-template-columns: minmax(0, 1fr); } }
table { border-collapse: collapse; margin: .2em 0 .8em; font-size: .92em; }
td, th { border: 1px solid #ccc; padding: .25em .45em; text-align: left; vertical-align: top; white-space: nowrap; }
tr.ceiling { font-style: italic; background: #f4f4f4; }
tr.chosen { font-weight: bold; background: #e6f4e6; }
tr.copy { background: #fde2e2; color: #8a1c1c; }
table.scores td:last-child { white-space: normal; min-width: 6em; }  /* "reference copy — memorised" wraps */
table.suite td:last-child { white-space: normal; min-width: 12em; }
.params code { background: #f3f3f3; padding: .1em .4em; border-radius: 3px; white-space: nowrap; line-height: 1.9; }
details.checkpoint summary { cursor: pointer; }
.gallery { display: flex; flex-wrap: wrap; gap: .9em; }
figure { margin: 0; }
figure.shot { width: 224px; }
figure.shot img, figure.reference img { display: block; object-fit: contain; background: #f4f4f4; border: 1px solid #ddd; }
figure.shot figcaption { font-size: .8em; color: #555; margin-top: .25em; display: -webkit-box; -webkit-line-clamp: 3;
  -webkit-box-orient: vertical; overflow: hidden; }
figure.reference figcaption { font-size: .8em; color: #555; text-align: center; }
img.pixelated { image-rendering: pixelated; }
.suite-prompt { margin: .4em 0 .9em; } .suite-prompt h4 { margin: .2em 0; }
.suite-row { display: grid; grid-template-columns: 4em minmax(0, 1fr); align-items: center; gap: .4em; margin: .2em 0; }
.suite-row .gallery { gap: .3em; }
.suite-row img { display: block; border: 1px solid #ddd; background: #f4f4f4; }
.lightbox { display: none; position: fixed; inset: 0; z-index: 10; background: rgba(0, 0, 0, .86);
  align-items: center; justify-content: center; }
.lightbox:target { display: flex; }
.lightbox .backdrop { position: absolute; inset: 0; }
.lightbox figure { position: relative; max-width: 92vw; text-align: center; color: #eee; }
.lightbox img { width: min(84vh, 90vw); height: min(84vh, 90vw); object-fit: contain; background: #fff; }
.lightbox figcaption { margin-top: .5em; max-width: min(84vh, 90vw); }
.lightbox a { color: #9cf; }
</style></head><body id="top">"""
