"""Scores and parameters as tables and lines: one place for the REPL, the CLI and the HTML report.

The builders return plain data (``Table``: title, columns, rows of text, the ceiling row apart, a
caption) so the terminal (``show``, through a ``UI``) and the report (``agent.report``) print the
same figures the same way. Numbers: three decimals, ``mean ± std``, "—" for a missing value.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from agent.knobs import knob_values
from agent.records import RoundRecord, RoundTrain
from tools.scoring.records import Analysis, ComparisonReport, Feedback

if TYPE_CHECKING:
    from agent.ui import UI

SCORE_COLUMNS = ["generator", "quality", "CLIP", "features", "SSIM", "band"]
MISSING = "—"
CHOSEN = "LoRA"  # marks the checkpoint exported as the round's LoRA


def number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def mean_std(mean: Any, std: Any = None) -> str:
    return f"{number(mean)} ± {number(std)}" if isinstance(std, (int, float)) else number(mean)


def figure(value: Any) -> str:
    """A report figure ``{"mean", "std"}`` (or a bare number) as ``mean ± std``."""
    if isinstance(value, dict):
        return mean_std(value.get("mean"), value.get("std"))
    return number(value)


def params_text(params: dict) -> str:
    """The knobs of ``params`` as ``steps=30 learning_rate=0.03 …`` (emphasis as a phrase list)."""
    shown = []
    for name, value in knob_values(params).items():
        if name == "feature_emphasis":
            if value:
                shown.append(f"emphasis={', '.join(value)}")
        else:
            shown.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(shown)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    ceiling: list[str] | None = None  # the references' own row, shown apart
    caption: str | None = None  # plain text
    notes: list[str] = field(default_factory=list)


def report_scores(report: ComparisonReport) -> Table:
    """The ranking of a fresh comparison report (``aldar score``, ``/score``): generators by mean quality."""
    rows = []
    for entry in report["ranking"]:
        scores = report["generators"][entry["generator"]]
        rows.append([f"{entry['rank']}. {entry['generator']}", figure(scores["quality"]), figure(scores["clip"]),
                     figure(scores["features"]), figure(scores["ssim"]), scores["band"]])
    ceiling = report["ceiling"]
    ceiling_row = None
    if ceiling:
        ceiling_row = ["reference ceiling", figure(ceiling["quality"]), figure(ceiling["clip"]),
                       figure(ceiling["features"]), figure(ceiling["ssim"]), ceiling["band"]]
    weights = report["weights"]
    caption = (f"quality = {weights['clip']:g}·CLIP + {weights['features']:g}·features + {weights['ssim']:g}·SSIM "
               "(mean ± std); " + ("ceiling = the references scored leave-one-out against each other" if ceiling
                                   else "no ceiling: it needs at least two references"))
    return Table("generators ranked by mean quality", SCORE_COLUMNS, rows, ceiling_row, caption,
                 notes=[notice] if (notice := _notice(report)) else [])


def record_scores(record: RoundRecord) -> Table:
    """The scores of one finished round of the history (``aldar run``, the HTML report); tolerant,
    as a history read from disk may hold records of older versions."""
    rows = []
    for name, scores in sorted((record.get("scores") or {}).items(), key=lambda kv: -(kv[1].get("quality") or 0.0)):
        rows.append([name, mean_std(scores.get("quality"), scores.get("quality_std")), number(scores.get("clip")),
                     number(scores.get("features")), number(scores.get("ssim")), str(scores.get("band") or "")])
    ceiling = record.get("ceiling")
    ceiling_row = None
    if ceiling:
        ceiling_row = ["reference ceiling", number(ceiling.get("quality")), number(ceiling.get("clip")),
                       number(ceiling.get("features")), number(ceiling.get("ssim")), ""]
    caption = f"next: {record.get('rationale')} ({record.get('decided_by')})" if record.get("rationale") else None
    return Table(f"round {record.get('round')} ranking", SCORE_COLUMNS, rows, ceiling_row, caption)


def checkpoint_choice(train: RoundTrain) -> Table | None:
    """Which training checkpoint became the round's LoRA (the title) and why (the caption), with every
    scored checkpoint's quality, the chosen one marked; None when the record names no chosen checkpoint
    (histories from before checkpoints were scored)."""
    chosen = train.get("chosen_checkpoint")
    if not chosen:
        return None
    rows = [[f"step {s.get('step')}", number(s.get("quality")), CHOSEN if s.get("step") == chosen.get("step") else ""]
            for s in train.get("checkpoint_scores") or []]
    return Table(f"LoRA used: checkpoint at step {chosen.get('step')}", ["checkpoint", "quality", ""], rows,
                 caption=str(chosen.get("why") or ""))


def history_table(history: list[RoundRecord]) -> Table:
    """One short row per finished round; the decision texts are long, so ``show_history`` prints them
    under the table, one line each (the report and training_history.json keep them whole)."""
    rows = []
    for record in history:
        params = record.get("params") or {}
        rows.append([str(record.get("round")), number(record.get("lora_score")), str(record.get("band") or ""),
                     str(record.get("best_competitor") or MISSING), number(record.get("score_gap")),
                     f"{params.get('steps')} / {params.get('learning_rate')} / {params.get('rank')}",
                     str(record.get("decided_by") or "")])
    return Table("rounds", ["round", "LoRA", "band", "best rival", "gap", "steps / lr / rank", "decided by"], rows,
                 caption="gap: the best rival's score minus the LoRA's")


def decision_lines(history: list[RoundRecord], width: int) -> list[str]:
    """``round N → <why the next round changed>``, each cut at a word to ``width`` columns with "…"."""
    lines = []
    for record in history:
        head = f"round {record.get('round')} → "
        why = " ".join(str(record.get("rationale") or MISSING).split())
        lines.append(head + textwrap.shorten(why, max(width - len(head), 20), placeholder=" …"))
    return lines


def analysis_table(analysis: Analysis) -> Table:
    """The top-2 features per category, their mean probability, agreement, and which are key features."""
    count = len(analysis["references"])
    key = {(d["category"], d["feature"]) for d in analysis["key_feature_details"]}
    rows = []
    for category, entry in analysis["categories"].items():
        for rank, item in enumerate(entry["top"], start=1):
            rows.append([category if rank == 1 else "", item["feature"], number(item["probability"]),
                         f"{item.get('agreement')}/{count}", "key" if (category, item["feature"]) in key else ""])
    return Table(f"key features of {analysis['character_name']} ({count} references, CLIP {analysis['model']})",
                 ["category", "feature (top-2)", "mean probability", "top-1 in", ""], rows,
                 notes=[n] if (n := _notice(analysis)) else [])


def feedback_lines(feedback: Feedback) -> list[tuple[str, str]]:
    """(style, text) lines: the LoRA's score and gap, then each recommendation by priority."""
    lines = []
    if feedback.get("lora_score") is not None:
        line = f"LoRA {feedback.get('lora_generator') or 'lora'}: {number(feedback['lora_score'])} ({feedback.get('band')})"
        gap = feedback.get("score_gap")
        if isinstance(gap, (int, float)):
            line += f", {abs(gap):.3f} {'behind' if gap > 0 else 'ahead of'} {feedback.get('compared_against') or 'target'}"
        lines.append(("", line))
    for recommendation in feedback.get("recommendations") or []:
        priority = recommendation.get("priority")
        lines.append(({"high": "red", "medium": "yellow"}.get(priority, "blue"),
                      f"{priority} {recommendation.get('message')}"))
    return lines


# --------------------------------------------------------------------------- on the terminal
def show(ui: "UI", table: Table) -> None:
    rows = [[escape(cell) for cell in row] for row in table.rows]
    if table.ceiling:
        rows.append([f"[italic]{escape(cell)}[/italic]" for cell in table.ceiling])
    ui.table(table.title, table.columns, rows, caption=escape(table.caption) if table.caption else None)
    for note in table.notes:
        ui.warn(escape(note))


def show_history(ui: "UI", history: list[RoundRecord]) -> None:
    show(ui, history_table(history))
    for line in decision_lines(history, ui.console.width - 1):  # -1: a full-width line would wrap in some terminals
        ui.info(escape(line))


def show_feedback(ui: "UI", feedback: Feedback) -> None:
    for style, text in feedback_lines(feedback):
        ui.info(f"  [{style}]{escape(text)}[/]" if style else escape(text))


def _notice(document: dict) -> str | None:
    return document.get("notice") or (document.get("profile") or {}).get("notice")
