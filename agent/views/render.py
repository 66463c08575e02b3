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
from agent.rounds.documents import (Bleed, Editability, GeneratorScores, Identity, Round, RoundFeedback, RoundTrain,
                                    SuitePrompt, feedback_of, round_of, rounds_of)
from agent.rounds.policy import BLEED_HIGH, EDITABILITY_VS_BASE
from agent.rounds.records import LORA
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


def ranked_scores(record: Round) -> tuple[list[tuple[str, GeneratorScores]], list[tuple[str, GeneratorScores]]]:
    """A round's generators by mean quality: (ranked, memorised) — those whose images copy references apart."""
    ordered = sorted(round_of(record).scores.items(), key=lambda kv: (-(kv[1].quality or 0.0), kv[0]))
    return ([(n, s) for n, s in ordered if not s.memorised], [(n, s) for n, s in ordered if s.memorised])


def record_scores(record: Round, previous: Round | None = None) -> Table:
    """The scores of one finished round of the history (``aldar run``, the HTML report). The caption: who won,
    how the prompt changed since ``previous`` (the round before), what the ceiling is."""
    record, previous = round_of(record), round_of(previous) if previous is not None else None
    rows = []
    ranked, copied = ranked_scores(record)
    for name, scores in ranked + copied:
        rows.append([name, mean_std(scores.quality, scores.quality_std), number(scores.clip),
                     number(scores.features), number(scores.ssim),
                     MEMORISED if scores.memorised else str(scores.band or "")])
    ceiling = record.ceiling
    ceiling_row = None
    if ceiling is not None:
        ceiling_row = ["reference ceiling", number(ceiling.quality), number(ceiling.clip),
                       number(ceiling.features), number(ceiling.ssim), ""]
    # The decision is not repeated here: the run says it once, after the table, and only when a round follows.
    caption = " ".join(part for part in (round_verdict(record), prompt_note(record, previous),
                                         record_ceiling_note(record)) if part)
    return Table(f"round {record.round} ranking", SCORE_COLUMNS, rows, ceiling_row, caption or None)


SUITE_COLUMNS = ["score", "LoRA", "base", "reference / target", "what it is"]


def suite_prompt_title(prompt: SuitePrompt) -> str:
    """``new background: forest`` or ``no trigger: another character``."""
    if prompt.kind == "new_context":
        return f"new {str(prompt.category or 'context').replace('_', ' ')}: {prompt.value}"
    return "no trigger: another character"


def suite_scores(record: Round) -> Table | None:
    """A round's identity, editability and bleed on its prompt suite, the LoRA beside the base (None: no suite)."""
    record = round_of(record)
    suite = record.suite
    if suite is None or not (suite.scores.identity or suite.scores.editability or suite.scores.bleed):
        return None
    identity = suite.scores.identity or Identity()
    edit, bleed = suite.scores.editability or Editability(), suite.scores.bleed or Bleed()
    rows = [
        ["identity", mean_std(identity.score, identity.spread), number(identity.base),
         f"{number(identity.ceiling)} (references)",
         f"key traits {_share(identity.feature_pass_rate)} · CLIP {number(identity.clip)}"],
        ["editability", mean_std(edit.rate, edit.spread), number(edit.base),
         f"≥ {EDITABILITY_VS_BASE} × base ({number(edit.vs_base)} ×)",
         "share drawing what the prompt asked: " + ", ".join(
             f"{c.replace('_', ' ')} {number(v.lora)} vs {number(v.base)}" for c, v in edit.by_category.items())],
        ["bleed", signed(bleed.score), "0 (by definition)", f"≤ {BLEED_HIGH}",
         f"CLIP to the references without the trigger: LoRA {number(bleed.lora_clip)}, "
         f"base {number(bleed.base_clip)}"],
    ]
    caption = (f"The LoRA in new scenes ({len(suite.prompts)} suite prompts): identity = (key traits shown + CLIP "
               "similarity) / 2 on new contexts; editability = the prompted background or style drawn; bleed = how "
               "much closer to the references the LoRA draws another character than the base does.")
    return Table(f"round {record.round} in new scenes", SUITE_COLUMNS, rows, None, caption)


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


def record_ceiling_note(record: Round) -> str:
    """``ceiling_note`` of a finished round ('' when the round had no ceiling)."""
    if record.ceiling is None:
        return ""
    ranked, _ = ranked_scores(record)
    return ceiling_note({name: {m: getattr(scores, m) for m in CEILING_METRICS} for name, scores in ranked},
                        {m: getattr(record.ceiling, m) for m in CEILING_METRICS})


def prompt_note(record: Round, previous: Round | None) -> str:
    """How the prompt every generator drew from changed since the round before (emphasised features added to
    or dropped from it): the base model's score moves with its prompt, not with any training."""
    if previous is None:
        return ""
    before = list(previous.params.get("feature_emphasis") or [])
    now = list(record.params.get("feature_emphasis") or [])
    added, dropped = [f for f in now if f not in before], [f for f in before if f not in now]
    if not (added or dropped):
        return ""
    def quoted(phrases: list[str]) -> str:
        return and_words([f"'{phrase}'" for phrase in phrases])

    changes = ([f"adds {quoted(added)}"] if added else []) + ([f"drops {quoted(dropped)}"] if dropped else [])
    plain_base = record.base_prompts != record.prompts
    others = [name for name in record.scores if name != LORA and not (plain_base and name == "base")]
    if plain_base:  # the base drew the prompt without the emphasis phrases: its score did not move with them
        moved = (f": {and_words(others)}'s score{'s' if len(others) > 1 else ''} move with the prompt, not with "
                 "training" if others else "")
        return (f"Since round {previous.round} the LoRA's prompt {' and '.join(changes)} (feature_emphasis); "
                f"the base model draws the prompt without the emphasis phrases{moved}.")
    moved = ("" if not others else f": {others[0]}'s score moves" if len(others) == 1
             else f": the scores of {and_words(others)} move")
    return (f"Since round {previous.round} the prompt all generators draw from {' and '.join(changes)} "
            f"(feature_emphasis){moved + ' with the prompt, not with training' if moved else ''}.")


def round_verdict(record: Round) -> str:
    """Who won the round and by how much, in words: "base beat the LoRA by 0.024." — from the record's
    scores, generators whose images copy references left out of the contest and said so."""
    record = round_of(record)
    ranked, copied = ranked_scores(record)
    scored = [(name, s.quality) for name, s in ranked if s.quality is not None]
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
        ceiling = record.ceiling.quality if record.ceiling is not None else None
        against = (f", {abs(ceiling - top):.3f} {'below' if ceiling > top else 'above'} the reference ceiling"
                   if ceiling is not None else "")
        sentences.append(f"Only {_who(name)} was ranked: {top:.3f}{against}.")
    for name, scores in copied:
        sentences.append(f"{_who(name, start=True)}'s images copy the references ({MEMORISED}): its "
                         f"{number(scores.quality)} does not count and it is not ranked.")
    return " ".join(sentences)


def _who(name: str, start: bool = False) -> str:
    if name == LORA:
        return "The LoRA" if start else "the LoRA"
    return name


def compute_text(record: Round) -> str:
    """What the round's training cost and started from: ``compute: 120 optimiser steps, 41.3 s training;
    continued round 1's LoRA from step 80 (the LoRA has had 200 steps)`` — or that it started afresh."""
    train = round_of(record).train
    if train.steps is None:
        return ""
    parts = [f"compute: {train.steps} optimiser steps" + (f", {train.seconds:.1f} s training"
                                                          if train.seconds is not None else "")]
    warm = train.warm_start
    if warm is not None:
        parts.append(f"continued round {warm.from_round}'s LoRA from step {warm.from_step} "
                     f"(the LoRA has had {warm.lora_steps_before + train.steps} steps)")
    else:
        parts.append("a fresh LoRA")
    if train.stopped_early:
        parts.append(f"stopped early: {train.stopped_early}")
    return "; ".join(parts)


def checkpoint_choice(train: RoundTrain) -> Table | None:
    """Which training checkpoint became the round's LoRA (the title) and why (the caption), with every
    scored checkpoint's quality, the chosen one marked; None when the record names no chosen checkpoint
    (histories from before checkpoints were scored)."""
    chosen = train.chosen_checkpoint
    if chosen is None:
        return None
    scores = train.checkpoint_scores
    with_loss = any(s.validation_loss is not None for s in scores)  # histories from before issue 26 have none
    rows = [[f"step {s.step}", number(s.quality), *([_loss(s.validation_loss)] if with_loss else []),
             CHOSEN if s.step == chosen.step else ""] for s in scores]
    columns = ["checkpoint", "quality", *(["validation loss"] if with_loss else []), ""]
    return Table(f"LoRA used: checkpoint at step {chosen.step}", columns, rows, caption=chosen.why)


def history_table(history: list[Round]) -> Table:
    """One short row per finished round; the decision texts are long, so ``UI.show_history`` prints them
    under the table, one line each (the report and training_history.json keep them whole)."""
    rows = []
    for record in rounds_of(history):
        params = record.params
        lead = -record.score_gap if record.score_gap is not None else None
        # score_gap is target minus LoRA (the deciders read "positive: behind"); a person reads a lead.
        rival = record.best_competitor or ("reference ceiling" if lead is not None else MISSING)
        rows.append([str(record.round), number(record.lora_score), str(record.band or ""),
                     str(rival), signed(lead), f"{params.get('steps')} / {params.get('learning_rate')} / {params.get('rank')}",
                     str(record.decided_by)])
    return Table("rounds", ["round", "LoRA", "band", "best rival", "lead", "steps / lr / rank", "decided by"],
                 rows, caption="lead: the LoRA's score minus the best rival's (positive: the LoRA is ahead)")


def decision_lines(history: list[Round], width: int) -> list[str]:
    """``round N → <why the next round changed>``, each cut at a word to ``width`` columns with "…"."""
    lines = []
    for record in rounds_of(history):
        head = f"round {record.round} → "
        why = " ".join((record.rationale or MISSING).split())
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


def feedback_lines(feedback: RoundFeedback | Feedback) -> list[tuple[str, str]]:
    """(style, text) lines: the LoRA's score and gap, then each recommendation by priority."""
    feedback = feedback_of(feedback)
    lines = []
    if feedback.lora_score is not None:
        line = f"LoRA {feedback.lora_generator or 'lora'}: {number(feedback.lora_score)} ({feedback.band})"
        gap = feedback.score_gap
        if feedback.reference_copy:  # no "ahead of the ceiling" for a copy: the score does not count
            line = f"LoRA {feedback.lora_generator or 'lora'}: {number(feedback.lora_score)} — {MEMORISED}, not ranked"
        elif gap is not None:
            line += f", {abs(gap):.3f} {'behind' if gap > 0 else 'ahead of'} {feedback.compared_against or 'target'}"
        lines.append(("", line))
        if not feedback.reference_copy and any(g.ceiling is not None for g in feedback.metric_gaps.values()):
            mine = {metric: feedback.metric(metric).lora for metric in CEILING_METRICS}
            top = {metric: feedback.metric(metric).ceiling for metric in CEILING_METRICS}
            note = ceiling_note({LORA: mine}, top)
            if note != CEILING_TEXT + ".":  # only where the LoRA passes it: the plain definition is in the table
                lines.append(("", note))
    for recommendation in feedback.recommendations:
        priority = recommendation.priority
        lines.append(({"high": "red", "medium": "yellow"}.get(priority, "blue"),
                      f"{priority} {recommendation.message}"))
    return lines


def _notice(document: dict) -> str | None:
    return document.get("notice") or (document.get("profile") or {}).get("notice")


def _loss(value: Any) -> str:
    """A validation loss: four decimals, as neighbouring checkpoints differ in the third."""
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING
