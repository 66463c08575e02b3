"""The score-per-round chart: an inline SVG for report.html, and the same chart as score_chart.png.

Both come from one layout. The y axis spans the data with some padding instead of 0–1, so that 0.77
against 0.80 is a visible gap; the lines are monotone cubic curves through the rounds' points —
smooth, yet never bulging past a value no round reached; the reference ceiling is dashed; a point whose
generator copied the references (a reference copy) is drawn hollow and crossed. No matplotlib, no
JavaScript: the SVG is text in the page, the PNG is drawn with PIL (supersampled, so edges are smooth).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

from agent.rounds.documents import Round, rounds_of
from tools.images import label_font
from tools.scoring.copies import MEMORISED

SIZE = (960, 420)
PALETTE = [(214, 96, 20), (31, 119, 180), (44, 160, 44), (148, 103, 189), (140, 86, 75), (227, 119, 194),
           (127, 127, 127), (188, 189, 34)]
CEILING = "reference ceiling"
CEILING_COLOUR = (90, 90, 90)
STEPS = (0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25)  # candidate y-tick spacings
MAX_TICKS = 8
SUPERSAMPLE = 3


# ------------------------------------------------------------------------ data
def chart_series(history: list[Round]) -> dict[str, list[tuple[int, float]]]:
    """generator → [(round, mean quality)], plus "reference ceiling" when the rounds have one."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in rounds_of(history):
        for name, scores in record.scores.items():
            if scores.quality is not None:
                series.setdefault(name, []).append((record.round, scores.quality))
        if record.ceiling is not None and record.ceiling.quality is not None:
            series.setdefault(CEILING, []).append((record.round, record.ceiling.quality))
    return series


def copied_points(history: list[Round]) -> set[tuple[str, int]]:
    """(generator, round) of every point whose images copy references."""
    return {(name, record.round) for record in rounds_of(history)
            for name, scores in record.scores.items() if scores.memorised}


def axis_range(values: list[float]) -> tuple[float, float, float]:
    """(low, high, tick step) of a y axis that fits ``values`` with padding, on whole ticks within 0..1."""
    if not values:
        return 0.0, 1.0, 0.2
    low, high = min(values), max(values)
    pad = max((high - low) * 0.12, 0.02)
    low, high = max(0.0, low - pad), min(1.0, high + pad)  # scores live in 0..1
    step = next((s for s in STEPS if (high - low) / s <= MAX_TICKS), STEPS[-1])
    low, high = math.floor(low / step + 1e-9) * step, math.ceil(high / step - 1e-9) * step
    return round(low, 6), round(high, 6), step


def tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as the step needs (0.025 → 3, 0.05 → 2, 0.2 → 1)."""
    decimals = next(d for d in range(1, 6) if abs(round(step, d) - step) < 1e-9)
    return f"{value:.{decimals}f}"


def monotone_segments(points: list[tuple[float, float]]) -> list[tuple[tuple[float, float], ...]]:
    """Cubic Bézier segments (start, control, control, end) through ``points`` (x increasing), with
    Fritsch–Carlson tangents: the curve rises and falls only where the data does (no overshoot)."""
    if len(points) < 2:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    slopes = [(ys[k + 1] - ys[k]) / (xs[k + 1] - xs[k]) for k in range(len(points) - 1)]
    tangents = [slopes[0]]
    for k in range(1, len(points) - 1):
        before, after = slopes[k - 1], slopes[k]
        tangents.append(0.0 if before * after <= 0 else 2 / (1 / before + 1 / after))  # harmonic mean
    tangents.append(slopes[-1])
    segments = []
    for k in range(len(points) - 1):
        third = (xs[k + 1] - xs[k]) / 3
        segments.append(((xs[k], ys[k]), (xs[k] + third, ys[k] + tangents[k] * third),
                         (xs[k + 1] - third, ys[k + 1] - tangents[k + 1] * third), (xs[k + 1], ys[k + 1])))
    return segments


# ------------------------------------------------------------------------ layout
@dataclass
class Layout:
    width: int
    height: int
    left: int
    right: int  # x of the plot's right edge
    top: int
    bottom: int  # y of the plot's bottom edge
    first: int
    last: int
    low: float
    high: float
    step: float

    def x(self, number: float) -> float:
        if self.last == self.first:
            return (self.left + self.right) / 2
        inset = 28  # points never sit on the y axis
        return self.left + inset + (number - self.first) / (self.last - self.first) * (self.right - self.left - 2 * inset)

    def y(self, score: float) -> float:
        return self.bottom - (score - self.low) / (self.high - self.low) * (self.bottom - self.top)

    def y_ticks(self) -> list[float]:
        count = round((self.high - self.low) / self.step)
        return [round(self.low + i * self.step, 6) for i in range(count + 1)]


@dataclass
class Line:
    name: str
    colour: tuple[int, int, int]
    width: float
    points: list[tuple[int, float]]
    copied: set[int]  # rounds whose point is a reference copy


def chart_layout(history: list[Round], size: tuple[int, int] = SIZE) -> tuple[Layout, list[Line]]:
    series = chart_series(history)
    copies = copied_points(history)
    low, high, step = axis_range([score for points in series.values() for _, score in points])
    rounds = [r.round for r in rounds_of(history)] or [1]
    width, height = size
    layout = Layout(width, height, left=64, right=width - 190, top=40, bottom=height - 52,
                    first=min(rounds), last=max(rounds), low=low, high=high, step=step)
    lines = []
    for index, (name, points) in enumerate(sorted(series.items(), key=_legend_order)):
        colour = CEILING_COLOUR if name == CEILING else PALETTE[index % len(PALETTE)]
        lines.append(Line(name, colour, 3.0 if name == "lora" else 2.0, points,
                          {number for generator, number in copies if generator == name}))
    return layout, lines


def _legend_order(item: tuple[str, list]) -> tuple[bool, bool, str]:
    name = item[0]
    return name == CEILING, name != "lora", name  # the LoRA first (always orange), the ceiling last


# ------------------------------------------------------------------------ SVG
def _svg_frame(layout: "Layout", css_class: str, label: str, title: str) -> list[str]:
    """The opening of an SVG chart: the root element, white ground, title and the y axis's grid lines and ticks."""
    out = [f'<svg class="{css_class}" viewBox="0 0 {layout.width} {layout.height}" role="img" '
           f'aria-label="{label}" xmlns="http://www.w3.org/2000/svg">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="{layout.left}" y="22" class="title">{title}</text>']
    for value in layout.y_ticks():
        y = layout.y(value)
        out.append(f'<line x1="{layout.left}" y1="{y:.1f}" x2="{layout.right}" y2="{y:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{layout.left - 8}" y="{y + 4:.1f}" text-anchor="end">{tick_label(value, layout.step)}</text>')
    return out


def score_chart_svg(history: list[Round], size: tuple[int, int] = SIZE) -> str:
    """The chart as an inline, scalable ``<svg>``; every point has a tooltip with its exact score."""
    layout, lines = chart_layout(history, size)
    esc = html.escape
    out = _svg_frame(layout, "chart", "quality score per round", "Quality score per round")
    for number in range(layout.first, layout.last + 1):
        x = layout.x(number)
        out.append(f'<line x1="{x:.1f}" y1="{layout.bottom}" x2="{x:.1f}" y2="{layout.bottom + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.1f}" y="{layout.bottom + 20}" text-anchor="middle">{number}</text>')
    out.append(f'<path d="M{layout.left} {layout.top} V{layout.bottom} H{layout.right}" fill="none" stroke="black" '
               'stroke-width="1.5"/>')
    out.append(f'<text x="{(layout.left + layout.right) / 2:.1f}" y="{layout.height - 10}" text-anchor="middle">round</text>')
    middle = (layout.top + layout.bottom) / 2
    out.append(f'<text transform="translate(16 {middle:.1f}) rotate(-90)" text-anchor="middle">quality score</text>')
    for index, line in enumerate(lines):
        colour = "#%02x%02x%02x" % line.colour
        xy = [(layout.x(r), layout.y(s)) for r, s in line.points]
        dash = ' stroke-dasharray="7 5"' if line.name == CEILING else ""
        if len(xy) > 1:
            d = f"M{xy[0][0]:.1f} {xy[0][1]:.1f}" + "".join(
                f" C{c1[0]:.1f} {c1[1]:.1f} {c2[0]:.1f} {c2[1]:.1f} {end[0]:.1f} {end[1]:.1f}"
                for _, c1, c2, end in monotone_segments(xy))
            out.append(f'<path class="series" data-name="{esc(line.name)}" d="{d}" fill="none" stroke="{colour}" '
                       f'stroke-width="{line.width:g}" stroke-linejoin="round" stroke-linecap="round"{dash}/>')
        for (number, score), (x, y) in zip(line.points, xy):
            copied = number in line.copied
            tip = f"round {number} · {line.name}: {score:.3f}" + (f" ({MEMORISED})" if copied else "")
            fill = "white" if copied else colour
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{fill}" stroke="{colour}" stroke-width="2">'
                       f'<title>{esc(tip)}</title></circle>')
            if copied:
                out.append(f'<path d="M{x - 4:.1f} {y - 4:.1f} L{x + 4:.1f} {y + 4:.1f} M{x - 4:.1f} {y + 4:.1f} '
                           f'L{x + 4:.1f} {y - 4:.1f}" stroke="{colour}" stroke-width="1.5"/>')
        legend_y = layout.top + 8 + index * 22
        out.append(f'<line x1="{layout.right + 18}" y1="{legend_y}" x2="{layout.right + 44}" y2="{legend_y}" '
                   f'stroke="{colour}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{layout.right + 52}" y="{legend_y + 4}">{esc(line.name)}</text>')
    if any(line.copied for line in lines):  # two lines: the legend column is narrow
        legend_y = layout.top + 8 + len(lines) * 22
        first, _, second = MEMORISED.partition(" — ")
        out.append(f'<text x="{layout.right + 18}" y="{legend_y + 4}" class="note">○× {esc(first)}'
                   f'<tspan x="{layout.right + 36}" dy="18">{esc(second)}</tspan></text>')
    out.append("</svg>")
    return "\n".join(out)


# ------------------------------------------------------------------------ PNG
def draw_score_chart(history: list[Round], size: tuple[int, int] = SIZE) -> Image.Image:
    """The same chart as a PIL image (score_chart.png): shapes drawn at 3× and scaled down for smooth
    edges, text drawn at full size afterwards."""
    layout, lines = chart_layout(history, size)
    k = SUPERSAMPLE
    big = Image.new("RGB", (layout.width * k, layout.height * k), "white")
    draw = ImageDraw.Draw(big)
    for value in layout.y_ticks():
        y = layout.y(value) * k
        draw.line([(layout.left * k, y), (layout.right * k, y)], fill=(230, 230, 230), width=k)
    for number in range(layout.first, layout.last + 1):
        x = layout.x(number) * k
        draw.line([(x, layout.bottom * k), (x, (layout.bottom + 5) * k)], fill="black", width=k)
    draw.line([(layout.left * k, layout.top * k), (layout.left * k, layout.bottom * k),
               (layout.right * k, layout.bottom * k)], fill="black", width=2 * k)
    for index, line in enumerate(lines):
        xy = [(layout.x(r), layout.y(s)) for r, s in line.points]
        curve = _sampled(xy)
        width = round(line.width * k)
        if len(curve) > 1:
            if line.name == CEILING:
                _dashed(draw, [(x * k, y * k) for x, y in curve], line.colour, width)
            else:
                draw.line([(x * k, y * k) for x, y in curve], fill=line.colour, width=width, joint="curve")
        for (number, _), (x, y) in zip(line.points, xy):
            box = [(x - 4.5) * k, (y - 4.5) * k, (x + 4.5) * k, (y + 4.5) * k]
            if number in line.copied:
                draw.ellipse(box, fill="white", outline=line.colour, width=2 * k)
                draw.line([((x - 4) * k, (y - 4) * k), ((x + 4) * k, (y + 4) * k)], fill=line.colour, width=k)
                draw.line([((x - 4) * k, (y + 4) * k), ((x + 4) * k, (y - 4) * k)], fill=line.colour, width=k)
            else:
                draw.ellipse(box, fill=line.colour)
        legend_y = (layout.top + 8 + index * 22) * k
        draw.line([((layout.right + 18) * k, legend_y), ((layout.right + 44) * k, legend_y)], fill=line.colour,
                  width=3 * k)
    image = big.resize((layout.width, layout.height), Image.LANCZOS)
    text = ImageDraw.Draw(image)
    font = label_font(13)
    text.text((layout.left, 10), "Quality score per round", fill="black", font=label_font(15))
    for value in layout.y_ticks():
        text.text((layout.left - 8, layout.y(value)), tick_label(value, layout.step), fill="black", font=font,
                  anchor="rm")
    for number in range(layout.first, layout.last + 1):
        text.text((layout.x(number), layout.bottom + 14), str(number), fill="black", font=font, anchor="mm")
    text.text(((layout.left + layout.right) / 2, layout.height - 12), "round", fill="black", font=font, anchor="mm")
    _vertical_text(image, "quality score", (6, (layout.top + layout.bottom) / 2), font)
    for index, line in enumerate(lines):
        text.text((layout.right + 52, layout.top + 8 + index * 22), line.name, fill="black", font=font, anchor="lm")
    if any(line.copied for line in lines):
        first, _, second = MEMORISED.partition(" — ")
        text.text((layout.right + 18, layout.top + 8 + len(lines) * 22), f"hollow, crossed: {first}",
                  fill="black", font=label_font(11), anchor="lm")
        text.text((layout.right + 36, layout.top + 26 + len(lines) * 22), second, fill="black", font=label_font(11),
                  anchor="lm")
    return image


def _sampled(xy: list[tuple[float, float]], per_segment: int = 24) -> list[tuple[float, float]]:
    """Points along the monotone curve through ``xy`` (the points themselves when there is one)."""
    segments = monotone_segments(xy)
    if not segments:
        return list(xy)
    curve = [segments[0][0]]
    for p0, c1, c2, p1 in segments:
        for i in range(1, per_segment + 1):
            t = i / per_segment
            u = 1 - t
            curve.append((u ** 3 * p0[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t ** 3 * p1[0],
                          u ** 3 * p0[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t ** 3 * p1[1]))
    return curve


def _dashed(draw: ImageDraw.ImageDraw, curve: list[tuple[float, float]], colour, width: int,
            dash: float = 21.0, gap: float = 15.0) -> None:
    """A dashed polyline (PIL has none): walk the curve, drawing ``dash`` and skipping ``gap`` pixels."""
    drawing, left, pending = True, dash, [curve[0]]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        start = 0.0
        while length - start > left:
            start += left
            point = (x0 + (x1 - x0) * start / length, y0 + (y1 - y0) * start / length)
            if drawing:
                draw.line(pending + [point], fill=colour, width=width)
            drawing, left, pending = not drawing, gap if drawing else dash, [point]
        left -= length - start
        pending.append((x1, y1))
    if drawing and len(pending) > 1:
        draw.line(pending, fill=colour, width=width)


def _vertical_text(image: Image.Image, text: str, centre: tuple[float, float], font) -> None:
    label = Image.new("RGB", (120, 18), "white")
    ImageDraw.Draw(label).text((2, 1), text, fill="black", font=font)
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (int(centre[0]), int(centre[1] - rotated.height / 2)))


# ------------------------------------------------------------------------ quality per training step
SINGLE_RUN = "one run (round 1's curve)"


def cumulative_checkpoints(history: list[Round]) -> list[tuple[int, float, int]]:
    """Every scored checkpoint of the rounds as (optimiser steps spent so far, validation quality, round): the
    steps of the rounds before it plus its own step — what the loop paid to get there."""
    points, spent = [], 0
    for record in rounds_of(history):
        for score in sorted((s for s in record.train.checkpoint_scores if s.quality is not None),
                            key=lambda s: s.step):
            points.append((spent + score.step, score.quality, record.round))
        spent += record.train.steps or 0
    return points


def single_run_curve(history: list[Round]) -> list[tuple[int, float]]:
    """A single run's checkpoints where the history has one: round 1 trained a fresh LoRA at the starting
    parameters, so its checkpoint scores are the first steps of one plain run (none past its length)."""
    history = rounds_of(history)
    if not history or history[0].train.warm_start is not None:
        return []
    return [(step, quality) for step, quality, number in cumulative_checkpoints(history[:1])]


def steps_chart_svg(history: list[Round], single: list[tuple[int, float]] | None = None,
                    size: tuple[int, int] = SIZE) -> str:
    """Validation quality against cumulative optimiser steps: the loop's checkpoints (coloured by round, the
    rounds' boundaries marked) beside a single run's curve of the same steps (``single``: e.g. the bench's;
    else round 1's own, which is one)."""
    loop = cumulative_checkpoints(history)
    single = single if single is not None else single_run_curve(history)
    if not loop:
        return ""
    esc = html.escape
    low, high, step = axis_range([q for _, q, _ in loop] + [q for _, q in single])
    last = max([s for s, _, _ in loop] + [s for s, _ in single])
    width, height = size
    layout = Layout(width, height, left=64, right=width - 190, top=40, bottom=height - 52,
                    first=0, last=max(last, 1), low=low, high=high, step=step)
    out = _svg_frame(layout, "chart steps", "validation quality against cumulative training steps",
                     "Validation quality per training step spent")
    tick = next((t for t in (10, 20, 25, 40, 50, 100, 200, 250, 500, 1000, 2000, 5000) if last / t <= 8), 10000)
    for value in range(0, last + 1, tick):
        x = layout.x(value)
        out.append(f'<line x1="{x:.1f}" y1="{layout.bottom}" x2="{x:.1f}" y2="{layout.bottom + 5}" stroke="black"/>')
        out.append(f'<text x="{x:.1f}" y="{layout.bottom + 20}" text-anchor="middle">{value}</text>')
    out.append(f'<path d="M{layout.left} {layout.top} V{layout.bottom} H{layout.right}" fill="none" stroke="black" '
               'stroke-width="1.5"/>')
    out.append(f'<text x="{(layout.left + layout.right) / 2:.1f}" y="{height - 10}" text-anchor="middle">'
               'optimiser steps (cumulative over the rounds)</text>')
    middle = (layout.top + layout.bottom) / 2
    out.append(f'<text transform="translate(16 {middle:.1f}) rotate(-90)" text-anchor="middle">validation quality</text>')
    legend = []
    if len(single) > 1:
        d = "M" + " L".join(f"{layout.x(s):.1f} {layout.y(q):.1f}" for s, q in single)
        out.append(f'<path class="series" data-name="{esc(SINGLE_RUN)}" d="{d}" fill="none" stroke="#888" '
                   'stroke-width="2" stroke-dasharray="7 5"/>')
        legend.append((SINGLE_RUN, "#888"))
    rounds = sorted({number for _, _, number in loop})
    for index, number in enumerate(rounds):
        colour = "#%02x%02x%02x" % PALETTE[index % len(PALETTE)]
        points = [(s, q) for s, q, n in loop if n == number]
        d = "M" + " L".join(f"{layout.x(s):.1f} {layout.y(q):.1f}" for s, q in points)
        out.append(f'<path class="series" data-name="round {number}" d="{d}" fill="none" stroke="{colour}" '
                   'stroke-width="2.5"/>')
        for s, q in points:
            out.append(f'<circle cx="{layout.x(s):.1f}" cy="{layout.y(q):.1f}" r="4" fill="{colour}">'
                       f'<title>round {number} · {s} steps spent: {q:.3f}</title></circle>')
        legend.append((f"round {number}", colour))
    for index, (name, colour) in enumerate(legend):
        legend_y = layout.top + 8 + index * 22
        dash = ' stroke-dasharray="7 5"' if name == SINGLE_RUN else ""
        out.append(f'<line x1="{layout.right + 18}" y1="{legend_y}" x2="{layout.right + 44}" y2="{legend_y}" '
                   f'stroke="{colour}" stroke-width="3"{dash}/>')
        out.append(f'<text x="{layout.right + 52}" y="{legend_y + 4}">{esc(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)
