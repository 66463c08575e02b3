"""What a training run reports: its result, the loss log (CSV, one row per optimizer step), checkpoint scores, and the
loss-curve PNG (PIL)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from tools.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json_object
from tools.images import label_font

LOSS_LOG = "loss_log.csv"
LOSS_CURVE = "loss_curve.png"
CHECKPOINT_SCORES = "checkpoint_scores.json"  # [{"step", "quality", ...}] one per scored checkpoint
COLUMNS = ("step", "loss", "loss_ema", "lr", "elapsed_s", "validation_loss")  # validation_loss: checkpoint rows only
RAW_COLOUR, EMA_COLOUR, SCORE_COLOUR, BEST_COLOUR = (150, 185, 230), (20, 70, 160), (220, 120, 20), (200, 20, 20)


@dataclass
class TrainResult:
    run_dir: Path
    lora_path: Path | None       # diffusers pytorch_lora_weights.safetensors (None when interrupted)
    kohya_path: Path | None      # lora_unet_* file for A1111 / ComfyUI (None when interrupted)
    steps: int                   # optimizer steps done
    final_loss: float | None     # moving average of the loss at the last step
    checkpoints: list[Path]
    loss_log: Path
    interrupted: bool = False
    loss_curve: Path | None = None
    validation_images: list[Path] = field(default_factory=list)
    checkpoint_scores: list[dict] = field(default_factory=list)  # {"step", "quality", ...} per scored checkpoint
    chosen_checkpoint: dict | None = None  # the checkpoint exported as the run's LoRA: {"step", "quality", "why"}
    validation_losses: dict[int, float] = field(default_factory=dict)  # step -> validation loss, per checkpoint
    notes: list[str] = field(default_factory=list)  # what the run changed or skipped in its input (one line each)
    stopped_early: str = ""  # why training stopped before config.steps (a plateau of validation quality), or ""
    edit_check_s: float = 0.0  # seconds this process spent drawing and scoring the checkpoints' edit check
    embedding_path: Path | None = None  # pivotal tuning's embeddings/<trigger>.safetensors (None without it)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_loss_log(path: Path, rows: list[dict]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in COLUMNS})
    return atomic_write_text(path, buffer.getvalue())


def read_loss_log(path: Path, up_to_step: int | None = None) -> list[dict]:
    """Rows of an earlier run (for resuming), as numbers, optionally only up to ``up_to_step``."""
    if not Path(path).is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [{"step": int(r["step"]), "loss": float(r["loss"]), "loss_ema": float(r["loss_ema"]),
                 "lr": float(r["lr"]), "elapsed_s": float(r["elapsed_s"]),
                 **({"validation_loss": float(r["validation_loss"])} if r.get("validation_loss") else {})}
                for r in csv.DictReader(handle)]
    return [r for r in rows if up_to_step is None or r["step"] <= up_to_step]


def write_checkpoint_scores(run_dir: Path, scores: list[dict]) -> Path:
    return atomic_write_json(Path(run_dir) / CHECKPOINT_SCORES, {"checkpoints": scores})


def read_checkpoint_scores(run_dir: Path) -> list[dict]:
    """The scores recorded for a run's checkpoints (empty when none were scored or the file is unreadable)."""
    data = read_json_object(Path(run_dir) / CHECKPOINT_SCORES) or {}
    found = data.get("checkpoints")
    return [s for s in found if isinstance(s, dict) and "step" in s and "quality" in s] if isinstance(found, list) else []


def draw_loss_curve(path: Path, rows: list[dict], title: str = "LoRA training loss",
                    size: tuple[int, int] = (800, 450), scores: list[dict] | None = None,
                    best_step: int | None = None) -> Path:
    """A line chart: raw loss (light) and its moving average (dark) against the step, with axes and ticks;
    checkpoint scores (quality, right axis) as dots, the chosen checkpoint ringed."""
    width, height = size
    left, right, top, bottom = 70, 60 if scores else 20, 52, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = label_font(13)
    draw.text((left, 10), title, fill="black", font=font)
    points = [(r["step"], r["loss"], r["loss_ema"]) for r in rows if math.isfinite(r["loss"])]
    x0, x1 = (points[0][0], points[-1][0]) if points else (0, 1)
    losses = [p[1] for p in points] + [p[2] for p in points]
    y0, y1 = (min(losses), max(losses)) if losses else (0.0, 1.0)
    if x1 == x0:
        x1 = x0 + 1
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(step: float, loss: float) -> tuple[float, float]:
        return left + (step - x0) / (x1 - x0) * plot_w, top + (1 - (loss - y0) / (y1 - y0)) * plot_h

    for i in range(5):  # horizontal grid with loss ticks
        fraction = i / 4
        gy = top + plot_h * (1 - fraction)
        draw.line((left, gy, left + plot_w, gy), fill=(230, 230, 230))
        draw.text((6, gy - 7), f"{y0 + (y1 - y0) * fraction:.4g}", fill="black", font=font)
    for step in sorted({round(x0 + (x1 - x0) * i / 4) for i in range(5)}):  # whole steps, no repeats
        gx = xy(step, y0)[0]
        draw.line((gx, top + plot_h, gx, top + plot_h + 4), fill="black")
        draw.text((gx - 8, top + plot_h + 8), str(step), fill="black", font=font)
    draw.rectangle((left, top, left + plot_w, top + plot_h), outline="black")  # over the grid
    draw.text((left + plot_w // 2 - 15, height - 20), "step", fill="black", font=font)
    draw.text((6, top - 26), "loss", fill="black", font=font)
    if len(points) > 1:
        draw.line([xy(s, loss) for s, loss, _ in points], fill=RAW_COLOUR, width=1)
        draw.line([xy(s, ema) for s, _, ema in points], fill=EMA_COLOUR, width=2)
    legend = [(RAW_COLOUR, "loss"), (EMA_COLOUR, "moving average")]
    if scores:
        _draw_scores(draw, font, scores, best_step, xy, (left, top, plot_w, plot_h))
        legend.append((SCORE_COLOUR, "checkpoint quality (right)"))
    for offset, (colour, label) in enumerate(legend):
        lx, ly = left + plot_w - 210, top + 10 + 18 * offset
        draw.line((lx, ly + 7, lx + 24, ly + 7), fill=colour, width=2)
        draw.text((lx + 30, ly), label, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def _draw_scores(draw, font, scores: list[dict], best_step: int | None, xy, box) -> None:
    """Quality per checkpoint on a right-hand axis spanning the scores' own range."""
    left, top, plot_w, plot_h = box
    values = [s["quality"] for s in scores]
    low, high = min(values), max(values)
    if high - low < 1e-9:
        low, high = low - 0.05, high + 0.05
    for i in range(5):
        fraction = i / 4
        draw.text((left + plot_w + 6, top + plot_h * (1 - fraction) - 7), f"{low + (high - low) * fraction:.3f}",
                  fill=SCORE_COLOUR, font=font)
    points = [(xy(s["step"], 0)[0], top + (1 - (s["quality"] - low) / (high - low)) * plot_h, s) for s in scores]
    if len(points) > 1:
        draw.line([(x, y) for x, y, _ in points], fill=SCORE_COLOUR, width=1)
    for x, y, score in points:
        draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=SCORE_COLOUR)
        if score["step"] == best_step:
            draw.ellipse((x - 8, y - 8, x + 8, y + 8), outline=BEST_COLOUR, width=2)
            draw.text((x - 60, y - 24), f"chosen: step {score['step']}", fill=BEST_COLOUR, font=font)
