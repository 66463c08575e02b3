"""report.html: one self-contained page per results folder that opens offline.

References, the score-per-round chart (a PNG drawn with PIL: no matplotlib, no
JavaScript, no CDN), the score table of every round with the reference
ceiling, each round's decision, and an image grid per round × generator. All
links are relative to the results folder, so it can be zipped and moved.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from agent.render import CHOSEN, checkpoint_choice, params_text, record_scores
from tools.atomic import atomic_write_bytes, atomic_write_text
from tools.images import list_images, load_image

THUMBNAIL = 192
CHART_SIZE = (720, 400)
PALETTE = [(214, 96, 20), (31, 119, 180), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
           (127, 127, 127), (188, 189, 34)]
CEILING_COLOUR = (90, 90, 90)


def write_report(store, references: Path, history: list[dict]) -> Path:
    """(Re)write ``report.html`` and ``score_chart.png`` of ``store`` from its history."""
    root = store.root
    reference_thumbs = _reference_thumbnails(references, root / "report_assets")
    chart = draw_score_chart(history)
    atomic_write_bytes(store.chart_path, _png_bytes(chart))
    page = render_html(history, store.data, [p.relative_to(root).as_posix() for p in reference_thumbs],
                       store.chart_path.name)
    return atomic_write_text(store.report_path, page)


def _reference_thumbnails(references: Path, folder: Path) -> list[Path]:
    """Small copies of the references inside the results folder (the page must not point outside it)."""
    thumbs = []
    for path in list_images(references):
        target = folder / f"reference_{path.stem}.png"
        if not target.is_file() or target.stat().st_mtime < path.stat().st_mtime:
            image = load_image(path)
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            atomic_write_bytes(target, _png_bytes(image))
        thumbs.append(target)
    return thumbs


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------ chart
def chart_series(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """generator → [(round, mean quality)], plus "reference ceiling" when the rounds have one."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in history:
        for name, scores in (record.get("scores") or {}).items():
            if scores.get("quality") is not None:
                series.setdefault(name, []).append((record["round"], float(scores["quality"])))
        ceiling = record.get("ceiling") or {}
        if ceiling.get("quality") is not None:
            series.setdefault("reference ceiling", []).append((record["round"], float(ceiling["quality"])))
    return series


def draw_score_chart(history: list[dict], size: tuple[int, int] = CHART_SIZE) -> Image.Image:
    """Quality score (0-1) per round, one line per generator, with axes, ticks, labels and a legend."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)
    left, right, top, bottom = 58, width - 170, 34, height - 50
    draw.text((left, 8), "Quality score per round", fill="black", font=_font(15))
    rounds = [r["round"] for r in history] or [1]
    first, last = min(rounds), max(max(rounds), min(rounds) + 1)

    def x_of(number: float) -> float:  # inset, so points never hide the y axis
        inset = 24
        return left + inset + (number - first) / (last - first) * (right - left - 2 * inset)

    def y_of(score: float) -> float:
        return bottom - max(0.0, min(1.0, score)) * (bottom - top)

    for tick in range(6):  # horizontal grid and y ticks at 0, 0.2, ... 1
        value = tick / 5
        y = y_of(value)
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((left - 34, y - 7), f"{value:.1f}", fill="black", font=font)
    for number in range(first, last + 1):
        x = x_of(number)
        draw.line([(x, bottom), (x, bottom + 5)], fill="black")
        draw.text((x - 4, bottom + 8), str(number), fill="black", font=font)
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=2)
    draw.text(((left + right) / 2 - 18, height - 22), "round", fill="black", font=font)
    _vertical_text(image, "quality score", (6, (top + bottom) / 2), font)

    for index, (name, points) in enumerate(sorted(chart_series(history).items(), key=_legend_order)):
        colour = CEILING_COLOUR if name == "reference ceiling" else PALETTE[index % len(PALETTE)]
        xy = [(x_of(r), y_of(s)) for r, s in points]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=3 if name == "lora" else 2)
        for x, y in xy:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        legend_y = top + 4 + index * 20
        draw.line([(right + 16, legend_y + 7), (right + 40, legend_y + 7)], fill=colour, width=3)
        draw.text((right + 46, legend_y), name, fill="black", font=font)
    return image


def _legend_order(item: tuple[str, list]) -> tuple[bool, bool, str]:
    name = item[0]
    return name == "reference ceiling", name != "lora", name  # the LoRA first (always orange), ceiling last


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _vertical_text(image: Image.Image, text: str, centre: tuple[float, float], font) -> None:
    label = Image.new("RGB", (120, 18), "white")
    ImageDraw.Draw(label).text((2, 1), text, fill="black", font=font)
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (int(centre[0]), int(centre[1] - rotated.height / 2)))


# ------------------------------------------------------------------------ html
def render_html(history: list[dict], data: dict[str, Any], reference_thumbs: list[str], chart: str) -> str:
    profile = data.get("profile") or {}
    best = data.get("best_round")
    esc = html.escape
    parts = [_HEAD, "<h1>aldar — LoRA training rounds</h1>"]
    if profile.get("profile") == "tiny":
        parts.append(f'<p class="notice"><strong>Toy world, not real SDXL.</strong> {esc(profile.get("notice", ""))}</p>')
    stopped = data.get("stopped") or {}
    summary = esc(f"{len(history)} round(s); best round: {best if best is not None else '—'}")
    if stopped.get("reason"):
        summary += esc(f"; stopped: {stopped['reason']}")
    if data.get("best_lora"):
        summary += f'; best LoRA: <a href="{esc(data["best_lora"])}">{esc(data["best_lora"])}</a>'
    parts.append(f"<p>{summary}</p>")
    parts.append(f"<p class=\"meta\">models: {esc(str(profile.get('base_model', '?')))} · scorer "
                 f"{esc(str(profile.get('clip_model', '?')))} · {esc(str(profile.get('device', '?')))}</p>")
    parts.append("<h2>References</h2><div class=\"row\">")
    parts += [f'<img class="thumb" src="{esc(src)}" alt="reference">' for src in reference_thumbs]
    parts.append("</div>")
    if history:
        parts.append(f'<h2>Score per round</h2><img src="{esc(chart)}" alt="quality score per round">')
    for record in history:
        parts.append(_round_section(record, record["round"] == best))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _round_section(record: dict, is_best: bool) -> str:
    esc = html.escape
    title = f"Round {record['round']}" + (" — best round" if is_best else "")
    scores = record_scores(record)
    rows = ["<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in scores.rows]
    if scores.ceiling:
        rows.append('<tr class="ceiling">' + "".join(f"<td>{esc(cell)}</td>" for cell in scores.ceiling) + "</tr>")
    shown = params_text(record.get("params") or {})
    decision = record.get("decision") or {}
    grid = []
    for name, paths in ((record.get("paths") or {}).get("images") or {}).items():
        cells = "".join(f'<img class="thumb" src="{esc(p)}" alt="{esc(name)}">' for p in paths)
        grid.append(f"<tr><th>{esc(name)}</th><td>{cells}</td></tr>")
    skipped = record.get("skipped_competitors") or []
    return "\n".join([
        f"<h2>{esc(title)}</h2>",
        f"<p class=\"meta\">parameters: {esc(shown)}</p>",
        *(f"<p class=\"meta\">prompt: {esc(prompt)}</p>" for prompt in record.get("prompts") or []),
        _checkpoint_choice(record.get("train") or {}),
        "<table><tr>" + "".join(f"<th>{esc(column)}</th>" for column in scores.columns) + "</tr>",
        *rows, "</table>",
        f"<p><strong>Decision ({esc(str(record.get('decided_by')))}):</strong> {esc(str(record.get('rationale')))} "
        f"<code>{esc(json.dumps(decision.get('adjustments'), ensure_ascii=False))}</code></p>",
        f"<p class=\"meta\">not competing: {esc('; '.join(skipped))}</p>" if skipped else "",
        "<table class=\"grid\">", *grid, "</table>",
    ])


def _checkpoint_choice(train: dict) -> str:
    """Which training checkpoint became the round's LoRA, why, and every checkpoint's quality."""
    choice = checkpoint_choice(train)
    if choice is None:
        return ""
    esc = html.escape
    rows = [('<tr class="chosen">' if row[-1] == CHOSEN else "<tr>") + "".join(f"<td>{esc(cell)}</td>" for cell in row)
            + "</tr>" for row in choice.rows]
    table = ("<table class=\"checkpoints\"><tr>" + "".join(f"<th>{esc(column)}</th>" for column in choice.columns)
             + "</tr>" + "".join(rows) + "</table>") if rows else ""
    return f"<p><strong>{esc(choice.title)}</strong> — {esc(choice.caption or '')}</p>{table}"


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aldar report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
.notice { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }
.meta { color: #666; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
tr.ceiling { font-style: italic; background: #f4f4f4; }
tr.chosen { font-weight: bold; background: #e6f4e6; }
img.thumb { width: 128px; height: 128px; object-fit: contain; margin: 2px; image-rendering: pixelated; }
.row { display: flex; flex-wrap: wrap; }
</style></head><body>"""
