"""Scores and parameters as tables and lines: one place for the REPL, the CLI and the HTML report.

The builders return plain data (``Table``: title, columns, rows of text, the ceiling row apart, a
caption) so the terminal (``UI.show``) and the report (``agent.views.report``) print the
same figures the same way. Numbers: three decimals, ``mean ± std``, "—" for a missing value.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

from agent.rounds.knobs import value_text
from agent.rounds.records import LORA, RoundRecord, RoundTrain
from agent.words import and_words
from tools.numbers import finite_number
from tools.scoring.copies import MEMORISED, copies_text, memorised
from tools.scoring.records import Analysis, ComparisonReport, Feedback

SCORE_COLUMNS = ["generator", "quality", "CLIP", "features", "SSIM", "band"]
MISSING = "—"
CHOSEN = "LoRA"  # marks the checkpoint exported as the round's LoRA


def number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def signed(value: Any) -> str:
    """A difference with its sign always shown (``+0.042``, ``-0.013``): which side is ahead at a glance."""
    return f"{value:+.3f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def mean_std(mean: Any, std: Any = None) -> str:
    return f"{number(mean)} ± {number(std)}" if isinstance(std, (int, float)) else number(mean)


def figure(value: Any) -> str:
    """A report figure ``{"mean", "std"}`` (or a bare number) as ``mean ± std``."""
    if isinstance(value, dict):
        return mean_std(value.get("mean"), value.get("std"))
    return number(value)


def adjustments_text(adjustments: dict, before: dict | None = None) -> str:
    """A decision's changes as ``steps: 120 → 180 · feature_emphasis: none → skullcap`` (no arrow without
    ``before``); "no change" when there is none."""
    shown = []
    for name, value in (adjustments or {}).items():
        if before is not None and name in before:
            shown.append(f"{name}: {value_text(before[name])} → {value_text(value)}")
        else:
            shown.append(f"{name}: {value_text(value)}")
    return " · ".join(shown) or "no change"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    ceiling: list[str] | None = None  # the references' own row, shown apart
    caption: str | None = None  # plain text
    notes: list[str] = field(default_factory=list)


def report_scores(report: ComparisonReport) -> Table:
    """The ranking of a fresh comparison report (``aldar score``, ``/score``): generators by mean quality;
    a generator whose images copy references is listed after the others, unranked, and named in a note."""
    rows, notes = [], []
    for entry in report["ranking"]:
        name = entry["generator"]
        scores = report["generators"][name]
        copied = memorised(scores)
        rows.append([name if copied or entry.get("rank") is None else f"{entry['rank']}. {name}",
                     figure(scores["quality"]), figure(scores["clip"]), figure(scores["features"]),
                     figure(scores["ssim"]), MEMORISED if copied else scores["band"]])
        if copied:
            copies = [row for row in report.get("images") or [] if row["generator"] == name and row.get("reference_copy")]
            notes.append(f"{name} is a {MEMORISED}: {copies_text(scores['reference_copies'], scores['count'], copies)}; "
                         "ranked apart, its score does not count")
    ceiling = report["ceiling"]
    ceiling_row = None
    if ceiling:
        ceiling_row = ["reference ceiling", figure(ceiling["quality"]), figure(ceiling["clip"]),
                       figure(ceiling["features"]), figure(ceiling["ssim"]), ceiling["band"]]
    weights = report["weights"]
    means = {name: {metric: (scores.get(metric) or {}).get("mean") for metric in CEILING_METRICS}
             for name, scores in report["generators"].items() if not memorised(scores)}
    caption = (f"quality = {weights['clip']:g}·CLIP + {weights['features']:g}·features + {weights['ssim']:g}·SSIM "
               "(mean ± std). " + (ceiling_note(means, {m: (ceiling.get(m) or {}).get("mean") for m in CEILING_METRICS})
                                   if ceiling else "No ceiling: it needs at least two references."))
    if notice := _notice(report):
        notes.append(notice)
    return Table("generators ranked by mean quality", SCORE_COLUMNS, rows, ceiling_row, caption, notes=notes)


def ranked_scores(record: RoundRecord) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """A round's generators by mean quality: (ranked, memorised) — those whose images copy references apart."""
    ordered = sorted((record.get("scores") or {}).items(), key=lambda kv: (-(kv[1].get("quality") or 0.0), kv[0]))
    return ([(n, s) for n, s in ordered if not memorised(s)], [(n, s) for n, s in ordered if memorised(s)])


def record_scores(record: RoundRecord, previous: RoundRecord | None = None) -> Table:
    """The scores of one finished round of the history (``aldar run``, the HTML report); tolerant,
    as a history read from disk may hold records of older versions. The caption: who won, how the prompt
    changed since ``previous`` (the round before), what the ceiling is."""
    rows = []
    ranked, copied = ranked_scores(record)
    for name, scores in ranked + copied:
        rows.append([name, mean_std(scores.get("quality"), scores.get("quality_std")), number(scores.get("clip")),
                     number(scores.get("features")), number(scores.get("ssim")),
                     MEMORISED if memorised(scores) else str(scores.get("band") or "")])
    ceiling = record.get("ceiling")
    ceiling_row = None
    if ceiling:
        ceiling_row = ["reference ceiling", number(ceiling.get("quality")), number(ceiling.get("clip")),
                       number(ceiling.get("features")), number(ceiling.get("ssim")), ""]
    # The decision is not repeated here: the run says it once, after the table, and only when a round follows.
    caption = " ".join(part for part in (round_verdict(record), prompt_note(record, previous),
                                         record_ceiling_note(record)) if part)
    return Table(f"round {record['round']} ranking", SCORE_COLUMNS, rows, ceiling_row, caption or None)


SUITE_COLUMNS = ["score", "LoRA", "base", "reference / target", "what it is"]


def suite_prompt_title(prompt: dict) -> str:
    """``new background: forest`` or ``no trigger: another character``."""
    if prompt.get("kind") == "new_context":
        return f"new {str(prompt.get('category', 'context')).replace('_', ' ')}: {prompt.get('value')}"
    return "no trigger: another character"


def suite_scores(record: RoundRecord) -> Table | None:
    """A round's identity, editability and bleed on its prompt suite, the LoRA beside the base (None: no suite)."""
    suite = record.get("suite") if isinstance(record.get("suite"), dict) else None
    scores = (suite or {}).get("scores") or {}
    if not scores or not any(isinstance(v, dict) for v in scores.values()):
        return None
    identity, edit, bleed = (scores.get(k) if isinstance(scores.get(k), dict) else {}
                             for k in ("identity", "editability", "bleed"))
    rows = [
        ["identity", mean_std(identity.get("score"), identity.get("spread")), number(identity.get("base")),
         f"{number(identity.get('ceiling'))} (references)",
         f"key traits {_share(identity.get('feature_pass_rate'))} · CLIP {number(identity.get('clip'))}"],
        ["editability", mean_std(edit.get("rate"), edit.get("spread")), number(edit.get("base")),
         f"≥ 0.85 × base ({number(edit.get('vs_base'))} ×)",
         "share drawing what the prompt asked: " + ", ".join(
             f"{c.replace('_', ' ')} {number(v.get('lora'))} vs {number(v.get('base'))}"
             for c, v in (edit.get("by_category") or {}).items())],
        ["bleed", signed(bleed.get("score")), "0 (by definition)", "≤ 0.05",
         f"CLIP to the references without the trigger: LoRA {number(bleed.get('lora_clip'))}, "
         f"base {number(bleed.get('base_clip'))}"],
    ]
    count = len((suite or {}).get("prompts") or [])
    caption = (f"The LoRA in new scenes ({count} suite prompts): identity = (key traits shown + CLIP similarity) / 2 "
               "on new contexts; editability = the prompted background or style drawn; bleed = how much closer to "
               "the references the LoRA draws another character than the base does.")
    return Table(f"round {record['round']} in new scenes", SUITE_COLUMNS, rows, None, caption)


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


CEILING_METRICS = {"clip": "CLIP", "features": "features", "ssim": "SSIM"}
CEILING_TEXT = "Reference ceiling: each reference scored against the others (leave-one-out)"


def ceiling_note(scores: dict[str, dict], ceiling: dict) -> str:
    """What the reference ceiling is and, where a generator scores above it (``scores``: name → metric → mean),
    why that can happen: it is the references' agreement with each other, not a maximum."""
    above = []
    for name, values in scores.items():
        labels = [label for metric, label in CEILING_METRICS.items()
                  if None not in (mine := finite_number(values.get(metric)), top := finite_number(ceiling.get(metric)))
                  and mine > top]
        if labels:
            above.append((name, labels))
    if not above:
        return CEILING_TEXT + "."
    (first, labels), others = above[0], above[1:]
    who = "; ".join([f"{_who(first, start=True)} is above it on {and_words(labels)}",
                     *(f"{_who(name)} on {and_words(labels)}" for name, labels in others)])
    return (f"{CEILING_TEXT}. {who}: it is not a maximum, as an image close to what all references share can "
            "resemble each of them more than they, each with its own pose and details, resemble one another.")


def record_ceiling_note(record: RoundRecord) -> str:
    """``ceiling_note`` of a finished round ('' when the round had no ceiling)."""
    ceiling = record.get("ceiling")
    if not ceiling:
        return ""
    ranked, _ = ranked_scores(record)
    return ceiling_note({name: scores for name, scores in ranked}, ceiling)


def prompt_note(record: RoundRecord, previous: RoundRecord | None) -> str:
    """How the prompt every generator drew from changed since the round before (emphasised features added to
    or dropped from it): the base model's score moves with its prompt, not with any training."""
    if previous is None:
        return ""
    before = list((previous.get("params") or {}).get("feature_emphasis") or [])
    now = list((record.get("params") or {}).get("feature_emphasis") or [])
    added, dropped = [f for f in now if f not in before], [f for f in before if f not in now]
    if not (added or dropped):
        return ""
    def quoted(phrases: list[str]) -> str:
        return and_words([f"'{phrase}'" for phrase in phrases])

    changes = ([f"adds {quoted(added)}"] if added else []) + ([f"drops {quoted(dropped)}"] if dropped else [])
    others = [name for name in record.get("scores") or {} if name != LORA]
    moved = ("" if not others else f": {others[0]}'s score moves" if len(others) == 1
             else f": the scores of {and_words(others)} move")
    return (f"Since round {previous['round']} the prompt all generators draw from {' and '.join(changes)} "
            f"(feature_emphasis){moved + ' with the prompt, not with training' if moved else ''}.")


def round_verdict(record: RoundRecord) -> str:
    """Who won the round and by how much, in words: "base beat the LoRA by 0.024." — from the record's
    scores, generators whose images copy references left out of the contest and said so."""
    ranked, copied = ranked_scores(record)
    scored = [(name, float(s["quality"])) for name, s in ranked if isinstance(s.get("quality"), (int, float))]
    sentences = []
    if len(scored) >= 2:
        (winner, top), (second, runner_up) = scored[0], scored[1]
        lora_score = next((q for n, q in scored if n == LORA), None)
        if f"{top - runner_up:.3f}" == "0.000":  # no difference at the three decimals shown
            first, other = (second, winner) if second == LORA else (winner, second)
            sentences.append(f"{_who(first, start=True)} and {_who(other)} tied at {top:.3f}.")
        elif winner == LORA:
            sentences.append(f"The LoRA beat {second} by {top - runner_up:.3f} ({top:.3f} vs {runner_up:.3f}).")
        elif lora_score is not None:
            sentences.append(f"{winner} beat the LoRA by {top - lora_score:.3f} ({top:.3f} vs {lora_score:.3f}).")
        else:
            sentences.append(f"{winner} won with {top:.3f}, ahead of {_who(second)} by {top - runner_up:.3f}.")
    elif scored:
        name, top = scored[0]
        ceiling = (record.get("ceiling") or {}).get("quality")
        against = (f", {abs(ceiling - top):.3f} {'below' if ceiling > top else 'above'} the reference ceiling"
                   if isinstance(ceiling, (int, float)) else "")
        sentences.append(f"Only {_who(name)} was ranked: {top:.3f}{against}.")
    for name, scores in copied:
        sentences.append(f"{_who(name, start=True)}'s images copy the references ({MEMORISED}): its "
                         f"{number(scores.get('quality'))} does not count and it is not ranked.")
    return " ".join(sentences)


def _who(name: str, start: bool = False) -> str:
    if name == LORA:
        return "The LoRA" if start else "the LoRA"
    return name


def checkpoint_choice(train: RoundTrain) -> Table | None:
    """Which training checkpoint became the round's LoRA (the title) and why (the caption), with every
    scored checkpoint's quality, the chosen one marked; None when the record names no chosen checkpoint
    (histories from before checkpoints were scored)."""
    chosen = train.get("chosen_checkpoint")
    if not chosen:
        return None
    scores = train.get("checkpoint_scores") or []
    with_loss = any("validation_loss" in s for s in scores)  # histories from before issue 26 have none
    rows = [[f"step {s.get('step')}", number(s.get("quality")),
             *([_loss(s.get("validation_loss"))] if with_loss else []),
             CHOSEN if s.get("step") == chosen.get("step") else ""] for s in scores]
    columns = ["checkpoint", "quality", *(["validation loss"] if with_loss else []), ""]
    return Table(f"LoRA used: checkpoint at step {chosen.get('step')}", columns, rows,
                 caption=str(chosen.get("why") or ""))


def history_table(history: list[RoundRecord]) -> Table:
    """One short row per finished round; the decision texts are long, so ``UI.show_history`` prints them
    under the table, one line each (the report and training_history.json keep them whole)."""
    rows = []
    for record in history:
        params = record.get("params") or {}
        gap = record.get("score_gap")
        lead = -gap if isinstance(gap, (int, float)) and not isinstance(gap, bool) else None
        # score_gap is target minus LoRA (the deciders read "positive: behind"); a person reads a lead.
        rival = record.get("best_competitor") or ("reference ceiling" if lead is not None else MISSING)
        rows.append([str(record["round"]), number(record.get("lora_score")), str(record.get("band") or ""),
                     str(rival), signed(lead), f"{params.get('steps')} / {params.get('learning_rate')} / {params.get('rank')}",
                     str(record.get("decided_by") or "")])
    return Table("rounds", ["round", "LoRA", "band", "best rival", "lead", "steps / lr / rank", "decided by"],
                 rows, caption="lead: the LoRA's score minus the best rival's (positive: the LoRA is ahead)")


def decision_lines(history: list[RoundRecord], width: int) -> list[str]:
    """``round N → <why the next round changed>``, each cut at a word to ``width`` columns with "…"."""
    lines = []
    for record in history:
        head = f"round {record['round']} → "
        why = " ".join(str(record.get("rationale") or MISSING).split())
        lines.append(head + textwrap.shorten(why, max(width - len(head), 20), placeholder=" …"))
    return lines


def analysis_table(analysis: Analysis) -> Table:
    """The top-2 features per category, their mean probability, agreement, and which are key features."""
    count = len(analysis["references"])
    key = {(d["category"], d["feature"]) for d in analysis["key_feature_details"]}
    rows = []
    for category, entry in analysis["categories"].items():
        if entry.get("clear") is False:  # a probability near 1 would claim a match the pictures do not show
            best = entry["top"][0]
            rows.append([category, f"no clear match (nearest: {best['feature']})", number(best["probability"]),
                         f"{best.get('agreement')}/{count}", "key" if (category, best["feature"]) in key else ""])
            continue
        for rank, item in enumerate(entry["top"], start=1):
            rows.append([category if rank == 1 else "", item["feature"], number(item["probability"]),
                         f"{item.get('agreement')}/{count}", "key" if (category, item["feature"]) in key else ""])
    return Table(f"key features of {analysis['character_name']} ({count} references, CLIP {analysis['model']})",
                 ["category", "feature (top-2)", "mean probability", "top-1 in", ""], rows,
                 notes=[n] if (n := _notice(analysis)) else [])


def captions_table(analysis: Analysis) -> Table:
    """Each reference's training caption in both --caption-mode values: full, and identity-free (the trigger and
    what varies; the traits every reference shares are left to the trigger)."""
    from tools.scoring.analyzer import captions_for

    full, free = captions_for(analysis, "full"), captions_for(analysis, "identity-free")
    rows = [[name, full.get(name, MISSING), free.get(name, MISSING)] for name in sorted(full)]
    return Table("training captions", ["reference", "full", "identity-free"], rows)


def feedback_lines(feedback: Feedback) -> list[tuple[str, str]]:
    """(style, text) lines: the LoRA's score and gap, then each recommendation by priority."""
    lines = []
    if feedback.get("lora_score") is not None:
        line = f"LoRA {feedback.get('lora_generator') or 'lora'}: {number(feedback['lora_score'])} ({feedback.get('band')})"
        gap = feedback.get("score_gap")
        if feedback.get("reference_copy"):  # no "ahead of the ceiling" for a copy: the score does not count
            line = (f"LoRA {feedback.get('lora_generator') or 'lora'}: {number(feedback['lora_score'])} — "
                    f"{MEMORISED}, not ranked")
        elif isinstance(gap, (int, float)):
            line += f", {abs(gap):.3f} {'behind' if gap > 0 else 'ahead of'} {feedback.get('compared_against') or 'target'}"
        lines.append(("", line))
        gaps = feedback.get("metric_gaps") or {}
        if not feedback.get("reference_copy") and any(isinstance(g, dict) and g.get("ceiling") is not None
                                                      for g in gaps.values()):
            mine = {metric: (gaps.get(metric) or {}).get("lora") for metric in CEILING_METRICS}
            top = {metric: (gaps.get(metric) or {}).get("ceiling") for metric in CEILING_METRICS}
            note = ceiling_note({LORA: mine}, top)
            if note != CEILING_TEXT + ".":  # only where the LoRA passes it: the plain definition is in the table
                lines.append(("", note))
    for recommendation in feedback.get("recommendations") or []:
        priority = recommendation.get("priority")
        lines.append(({"high": "red", "medium": "yellow"}.get(priority, "blue"),
                      f"{priority} {recommendation.get('message')}"))
    return lines



def _notice(document: dict) -> str | None:
    return document.get("notice") or (document.get("profile") or {}).get("notice")


def _loss(value: Any) -> str:
    """A validation loss: four decimals, as neighbouring checkpoints differ in the third."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING
