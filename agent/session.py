"""One results folder, one set of settings: the autonomous improvement rounds.

A round reads top to bottom as the algorithm:
analyze (once, cached) → train → generate (LoRA, base, competitors) → score →
feedback → decide the next adjustment → record. ``aldar run``, the REPL and
the LLM's tools all drive the same ``Session``; each stage is a public method
so the REPL can run one at a time, and ``run_round`` chains them.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, NotRequired, TypedDict

from agent.decision import Decider, Decision, already_trained
from agent.knobs import bounds_for, clamp_adjustments, params_text
from agent.ranking import best_round, ranked_rounds
from agent.records import (LORA, CheckpointScore, ChosenCheckpoint, GeneratorScores, Overfitting, RoundRecord,
                           SessionFeedback, TrainingCurve)
from agent.store import MODEL_KEYS, RunStore
from tools.atomic import read_json_object
from tools.errors import AldarError, InputError, ResumeMismatchError
from tools.models import ModelProfile, resolve_profile
from tools.numbers import finite_number
from tools.scoring.records import Analysis, ComparisonReport
from tools.settings import Settings
from tools.timestamps import iso_timestamp, timestamp

if TYPE_CHECKING:  # annotations only: the trainer loads when a round trains
    from tools.training.config import TrainConfig

BASE = "base"


@dataclass
class SessionEvents:
    """What a ``Session`` reports while it works (as ``LoopEvents`` for the LLM loop); every hook is
    optional. The session never prints: ``aldar run`` and the REPL render these."""

    on_status: Callable[[str], None] | None = None  # progress of a stage: "round 2: training …"
    on_notice: Callable[[str], None] | None = None  # worth showing even in quiet mode: a round resumes
    on_warning: Callable[[str], None] | None = None  # a problem the run survives (a clamp, a skipped competitor)
    on_missing_key: Callable[[str], None] | None = None  # a competitor without its key; said every round


def _emit(hook: Callable[[str], None] | None, message: str) -> None:
    if hook is not None:
        hook(message)


class TrainedRound(TypedDict):
    run_dir: Path | None
    lora_path: Path | None
    kohya_path: NotRequired[Path | None]
    steps: int
    final_loss: float
    interrupted: bool
    resumed_from_step: NotRequired[int]  # 0: trained from scratch
    checkpoint_scores: list[CheckpointScore]
    chosen_checkpoint: ChosenCheckpoint | None


@dataclass
class RoundState:
    """What the stages of the round in progress have produced so far."""

    number: int
    params: dict
    stamp: str
    timings: dict[str, float] = field(default_factory=dict)  # stage → seconds (wall)
    compute: dict[str, float] = field(default_factory=dict)  # stage → seconds inside model code
    train: TrainedRound | None = None
    images: dict[str, list[Path]] | None = None
    skipped: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    report: ComparisonReport | None = None
    feedback: SessionFeedback | None = None
    report_path: Path | None = None
    feedback_path: Path | None = None


class Session:
    """Drives rounds over one results folder; holds its lock until ``close()``."""

    def __init__(self, settings: Settings, *, quiet: bool = False, events: SessionEvents | None = None) -> None:
        self.settings = settings
        self.quiet = quiet  # no progress bars from the capabilities
        self.events = events or SessionEvents()
        self.references = Path(settings.references)
        self.profile: ModelProfile = resolve_profile(settings)
        _validate_inputs(settings)  # before the lock and any folder: bad input costs nothing
        from tools.images import skipped_note

        if skipped := skipped_note(self.references):  # said once per session: the folder is read many times
            _emit(self.events.on_warning, skipped)

        self.default_params = default_params(self.profile)
        if "trigger_token" in self.default_params:
            self.default_params["trigger_token"] = settings.trigger_token
        self.bounds = bounds_for(self.default_params, self.profile.is_tiny)
        self.store = RunStore(settings.output_dir, self.profile.describe())
        try:
            _check_same_models(self.store, self.profile)
            discarded = self.store.discard_round_of_other_models()
        except BaseException:
            self.store.close()
            raise
        if discarded:
            _emit(self.events.on_notice, discarded)
        self.params: dict = starting_params(self.store.data, self.default_params)
        self.analysis: Analysis | None = None
        self.current: RoundState | None = None
        self.competitors: list[str] = list(settings.competitors)
        self.report_written: Path | None = None  # report.html, once this process has written it
        try:
            self._derive_from_finished_rounds()
        except BaseException:
            self.store.close()
            raise

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def history(self) -> list[dict]:
        return list(self.store.rounds)

    @property
    def next_round_number(self) -> int:
        return len(self.store.rounds) + 1

    @property
    def training_round_number(self) -> int:
        """The round the next ``train`` trains: the one in progress — unless that one is scored, because
        then a new training first records it (``finish_scored_round``) and trains the round after it."""
        if self.current is None:
            return self.next_round_number
        return self.current.number + 1 if self.current.feedback is not None else self.current.number

    def _say(self, message: str) -> None:
        _emit(self.events.on_status, message)

    @contextmanager
    def _stage(self, name: str, params: dict | None = None) -> Iterator[None]:
        """Time a stage of the current round and record it (and ``params``) as the in-progress stage."""
        if self.current is not None:
            self.store.set_stage(name, params)
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.current is not None:
                self.current.timings[name] = self.current.timings.get(name, 0.0) + time.perf_counter() - started

    def _compute(self, stage: str, started: float) -> None:
        if self.current is not None:
            self.current.compute[stage] = self.current.compute.get(stage, 0.0) + time.perf_counter() - started

    def _round(self) -> RoundState:
        """The round in progress, begun (and marked in the history) on first use."""
        if self.current is None:
            number = self.next_round_number
            self.current = RoundState(number=number, params=dict(self.params), stamp=RunStore.timestamp(number))
            self.store.begin_round(number, self.current.params)
        return self.current

    # ---------------------------------------------------------------- analyze
    def analyze(self, force: bool = False) -> Analysis:
        """The feature analysis of the references: reused from settings.analysis_path when it
        matches the references' hashes and the CLIP model, else computed and saved there."""
        if self.analysis is not None and not force:
            return self.analysis
        from tools.scoring.analyzer import analysis_matches, analyze_references
        from tools.scoring.taxonomy import load_taxonomy

        cached_path = Path(self.settings.analysis_path)
        with self._stage("analyze"):
            cached = None if force else read_json_object(cached_path)
            taxonomy = load_taxonomy(self.settings.taxonomy_path())
            if cached and analysis_matches(cached, self.references, self.profile.clip_model, taxonomy):
                self._say(f"analysis: reusing {cached_path} (references, CLIP model and taxonomy unchanged)")
                self.analysis = cached
            else:
                self._say(f"analysis: CLIP feature analysis of the references in {self.references} …")
                started = time.perf_counter()
                self.analysis = analyze_references(self.references, self.profile, self.settings.taxonomy_path(),
                                                   self.settings.trigger_token, self.settings.character_name,
                                                   cached_path)
                self._compute("analyze", started)
                self._say(f"analysis: key features {', '.join(self.analysis['key_features'])}")
        return self.analysis

    # ---------------------------------------------------------------- train
    def round_train_config(self) -> TrainConfig:
        """The trainer's config for ``self.params``, its checkpoints judged as the round will draw its images."""
        config = train_config(self.profile, self.params)
        if not config.validation_prompt:  # checkpoints are judged on the prompt the round will generate with
            config = dataclasses.replace(config, validation_prompt=self.prompt())
        # ... and at its guidance and negative prompt (none on tiny, SDXL's default otherwise)
        from tools.generation.sampling import SamplingSpec

        return config.judged_as_drawn(SamplingSpec.from_settings(self.settings))

    def train(self, adjustments: dict | None = None) -> TrainedRound:
        """Train this round's LoRA with ``self.params`` (after ``adjustments``, clamped)."""
        from tools.scoring.scorer import checkpoint_scorer
        from tools.training.lora_files import checkpoint_step
        from tools.training.trainer import train_lora

        if adjustments:
            self.apply(adjustments)
        analysis = self.analyze()
        state = self._round()
        state.params = dict(self.params)
        config = self.round_train_config()
        dataset = training_dataset(self.references, analysis, self.params.get("feature_emphasis") or [],
                                   self.params.get("caption_mode", "full"))
        run_dir = self.store.round_run_dir(state.number)
        # Each checkpoint is scored as the round will score the LoRA; the best one becomes the round's LoRA.
        scorer = checkpoint_scorer(self.references, self.profile, analysis, self.settings.metric_weights)
        checkpoint = self._latest_checkpoint(state.number)
        resumed_from = checkpoint_step(checkpoint) if checkpoint else 0
        if resumed_from:  # shown even when quiet: the round does not start from scratch
            _emit(self.events.on_notice, f"round {state.number}: resuming training from step {resumed_from} "
                                         f"({self.store.relative(checkpoint)})")
        with self._stage("train", params=state.params):
            self._say(f"round {state.number}: training {params_text(self.params)} → {self.store.relative(run_dir)}")
            started = time.perf_counter()
            try:
                result = train_lora(config, self.profile, dataset, run_dir, quiet=self.quiet, score_checkpoint=scorer)
            except ResumeMismatchError as error:
                # Checkpoints of this round made with other settings (e.g. changed by hand): keep them
                # aside and train the round afresh rather than stop the run.
                aside = run_dir.with_name(f"{run_dir.name}_stale_{timestamp()}")
                run_dir.rename(aside)
                _emit(self.events.on_warning,
                      f"{error.problem}; kept it as {self.store.relative(aside)} and retrained the round")
                resumed_from = 0
                result = train_lora(config, self.profile, dataset, run_dir, quiet=self.quiet, score_checkpoint=scorer)
            self._compute("train", started)
        if result.interrupted:  # Ctrl-C inside the trainer: its checkpoint is saved, the round stays unfinished
            raise KeyboardInterrupt
        for note in getattr(result, "notes", []):  # masks resized or missing: said once per round
            _emit(self.events.on_notice, f"round {state.number}: {note}")
        state.train = {"run_dir": result.run_dir, "lora_path": result.lora_path,
                       "kohya_path": getattr(result, "kohya_path", None), "steps": result.steps,
                       "final_loss": result.final_loss, "interrupted": result.interrupted,
                       "resumed_from_step": resumed_from, "checkpoint_scores": result.checkpoint_scores,
                       "chosen_checkpoint": result.chosen_checkpoint}
        state.images = state.report = state.feedback = None  # they came from the previous LoRA
        chosen = result.chosen_checkpoint or {}
        self._say(f"round {state.number}: trained {result.steps} steps, final loss {result.final_loss:.4f}; "
                  f"LoRA = step {chosen.get('step', result.steps)} ({chosen.get('why', 'last step')})")
        return state.train

    def _latest_checkpoint(self, number: int) -> Path | None:
        from tools.training.lora_files import latest_checkpoint

        run_dir = self.store.round_run_dir(number)
        return latest_checkpoint(run_dir) if run_dir.is_dir() else None

    def resume_step(self) -> int:
        """The step the next ``train`` continues from: the latest checkpoint of the round it trains (a
        finished ``/train`` of the same round too), 0 when it starts afresh. A checkpoint made with another
        rank, alpha or captions cannot be continued: ``train`` then sets it aside and starts afresh."""
        from tools.training.lora_files import checkpoint_step

        checkpoint = self._latest_checkpoint(self.training_round_number)
        return checkpoint_step(checkpoint) if checkpoint else 0

    def apply(self, adjustments: dict) -> tuple[dict, list[str]]:
        """Clamp ``adjustments`` to the safe bounds and apply them to ``params``: (applied, clamp notes)."""
        applied, notes = clamp_adjustments(self.params, adjustments, self.bounds)
        for note in notes:
            _emit(self.events.on_warning, note)
        self.params.update(applied)
        return applied, notes

    def set_next_params(self, adjustments: dict, rationale: str, decided_by: str) -> tuple[dict, list[str]]:
        """Change the next round's parameters outside a round's decision: (applied, clamp notes).

        Between rounds the change must outlive this process: the next ``Session`` starts from the last
        record's ``next_params``, so it is written there too, with who changed it and why.
        """
        applied, notes = self.apply(adjustments)
        if applied and self.current is None and self.store.rounds:
            self.store.amend_next_params(dict(self.params),
                                         {"adjustments": applied, "rationale": rationale, "decided_by": decided_by})
        return applied, notes

    def finish_scored_round(self, decision: Decision) -> dict | None:
        """Record the round in progress if it has been scored (a manual train → generate → score),
        so that the next ``train`` starts a new round; None when there is nothing to record."""
        if self.current is not None and self.current.feedback is not None:
            return self.finish_round(decision)
        return None

    def finish_scored_round_before_training(self, adjustments: dict, how: str, decided_by: str) -> dict | None:
        """``finish_scored_round`` for a training asked by hand (``/train``, the chat's ``train_lora``): the
        recorded decision says ``how`` and names the knobs the next round will really train with (clamped)."""
        applied, _ = clamp_adjustments(self.params, adjustments, self.bounds)
        rationale = f"{how}; round {self.training_round_number} trains with {params_text({**self.params, **applied})}"
        return self.finish_scored_round(Decision(adjustments, rationale, decided_by))

    def skip_competitors(self, names: list[str]) -> None:
        """Leave these competitors out from now on (the user declined paying for them)."""
        self.competitors = [name for name in self.competitors if name not in names]

    # ---------------------------------------------------------------- generate
    def generate(self, prompts: list[str] | None = None) -> dict:
        """Images of this round's LoRA, the base model and every configured competitor,
        from the same prompts and seeds. Returns generator → list of image paths."""
        from tools.generation.local import generate_local
        from tools.generation.sampling import SamplingSpec
        from tools.providers import configured_providers, generate_with_provider

        state = self._round()
        if state.train is None:
            raise InputError(f"round {state.number} has no trained LoRA yet", "run the train step first")
        prompts = prompts or [self.prompt()]
        settings = self.settings
        sampling = SamplingSpec.from_settings(settings)
        images: dict[str, list[Path]] = {}
        with self._stage("generate"):
            for name, lora in ((BASE, None), (LORA, state.train["lora_path"])):
                self._say(f"round {state.number}: generating {name} images …")
                started = time.perf_counter()
                made = generate_local(self.profile, prompts, self.store.round_images_dir(state.number, name), sampling,
                                      lora_path=lora, lora_scale=float(self.params.get("lora_scale", 1.0)),
                                      name=name, quiet=self.quiet)
                self._compute("generate", started)
                images[name] = [image.path for image in made]
            providers, skipped = configured_providers(settings, self.competitors)
            state.skipped = list(skipped)
            for line in skipped:
                _emit(self.events.on_missing_key, line)
            for provider in providers:
                self._say(f"round {state.number}: asking {provider.name} …")
                started = time.perf_counter()
                try:
                    made = generate_with_provider(provider, prompts, self.store.round_images_dir(state.number, provider.name),
                                                  sampling.images_per_prompt, sampling.seed, skipped=state.skipped,
                                                  quiet=self.quiet)
                except AldarError as exc:  # one failing competitor must not end the round
                    _emit(self.events.on_warning, f"{provider.name} skipped this round: {exc}")
                    state.skipped.append(f"{provider.name}: {exc}")
                    continue
                finally:
                    self._compute("generate", started)
                if made:  # every image safety-filtered: nothing to score, the reason is in skipped
                    images[provider.name] = [image.path for image in made]
        state.images, state.prompts = images, list(prompts)
        state.report = state.feedback = None  # they scored the previous images
        return images

    def keyed_competitors(self) -> list[str]:
        """The competitors that will really be asked (their API key is set): the paid ones."""
        from tools.providers import configured_providers

        ready, _ = configured_providers(self.settings, self.competitors)
        return [provider.name for provider in ready]

    def prompt(self) -> str:
        """The test prompt, with the emphasised features right after the trigger token."""
        return emphasise(self.settings.test_prompt, self.params.get("feature_emphasis") or [],
                         self.settings.trigger_token)

    # ---------------------------------------------------------------- score
    def score(self) -> dict:
        """Score every generator of this round against the references; save report and feedback."""
        from tools.scoring.scorer import build_feedback, score_generators

        state = self._round()
        if not state.images:
            raise InputError(f"round {state.number} has no generated images yet", "run the generate step first")
        with self._stage("score"):
            self._say(f"round {state.number}: scoring {sum(len(v) for v in state.images.values())} images …")
            started = time.perf_counter()
            report = score_generators(state.images, self.references, self.profile, self.analyze(),
                                      self.settings.metric_weights)
            feedback = build_feedback(report, LORA)
            feedback["overfitting"] = overfitting_signals(report)
            if state.train:
                feedback["training"] = training_curve(state.train)
            self._compute("score", started)
        with self._stage("store"):
            report["round"] = feedback["round"] = state.number
            state.report_path = self.store.write_comparison_report(report, state.stamp)
            state.feedback_path = self.store.write_feedback(feedback, state.stamp)
        state.report, state.feedback = report, feedback
        return {"report": report, "feedback": feedback, "report_path": state.report_path,
                "feedback_path": state.feedback_path}

    # ---------------------------------------------------------------- decide + record
    def decide(self, decider: Decider) -> Decision:
        state = self._round()
        if state.feedback is None:
            raise InputError(f"round {state.number} has no feedback yet", "run the score step first")
        with self._stage("decide"):
            decision = decider.decide(state.feedback, self.history(), dict(self.params))
        # The LLM decider asks again and falls back itself; what still repeats a trained round ends the run.
        applied, _ = clamp_adjustments(self.params, decision.adjustments, self.bounds)
        repeated = already_trained({**self.params, **applied}, self.history(), state.params, state.number)
        if repeated is not None and not decision.stop:
            decision.stop = True
            decision.rationale += (f" Round {repeated} already trained these parameters (training them again would "
                                   "only reproduce its LoRA), so the run stops here.")
        return decision

    def finish_round(self, decision: Decision) -> RoundRecord:
        """Apply ``decision`` to the params of the next round and append this round to the history."""
        state = self._round()
        with self._stage("store"):
            applied, notes = clamp_adjustments(self.params, decision.adjustments, self.bounds)
            next_params = {**self.params, **applied}  # self.params: the trained ones plus any later apply()
            record = round_record(state, self.store, self.profile.describe(), decision, applied, notes, next_params)
            self.store.finish_round(record)
            # The round is recorded: from here on a Ctrl-C must not leave it as the round in progress.
            self.params = dict(next_params)
            self.current = None
            self._update_best()
            self._write_report()
        return record

    def _derive_from_finished_rounds(self) -> None:
        """What the finished rounds imply — best round, best_lora/, report and chart — made true again.

        A kill between recording a round and writing these (or during one of them) leaves the history
        ahead of them; with the round limit reached no later round would ever redo them.
        """
        if self.store.rounds:
            self._update_best()
            self._write_report()

    def _update_best(self) -> None:
        best = best_round(self.store.rounds)
        if best is not None:
            if not self.store.best_lora_holds(best):
                self.store.mark_best(best)

    def _write_report(self) -> None:
        from agent.report import write_report

        self.report_written = write_report(self.store, self.references, self.history())

    def run_round(self, decider: Decider) -> dict:
        """analyze (once) → train → generate → score → feedback → decide → record.

        Stages this round already finished in this process (``/train``, ``/generate``, ``/score``
        or the chat's tools before ``/auto``) are not run again: no second training, no second paid call.
        """
        state = self._round()
        self.analyze()
        reused = [stage for stage, done in (("LoRA", state.train), ("images", state.images), ("scores", state.feedback))
                  if done]
        if reused:  # said even when quiet: otherwise "/auto 1" after "/train" looks as if it trained nothing
            from agent.render import and_words

            _emit(self.events.on_notice, f"round {state.number}: using the {and_words(reused)} already made for it "
                                         "in this session (not made again)")
        if state.train is None:
            self.train()
        if not state.images:
            self.generate()
        if state.feedback is None:
            self.score()
        return self.finish_round(self.decide(decider))

    def stop_before(self, rounds: int) -> str:
        """Why ``run_rounds(rounds)`` would stop before training anything, or '' when it would run a round."""
        return stop_reason(self.history(), rounds, self.settings.target_score, self.settings.patience)

    def run_rounds(self, rounds: int, decider: Decider,
                   on_round: Callable[[dict], None] | None = None) -> list[dict]:
        """Run rounds until ``rounds`` are in the history, the target band is reached, or
        ``settings.patience`` rounds pass without improvement. Finished rounds are kept on resume;
        ``on_round(record)`` is called after each (``aldar run`` prints the ranking there)."""
        finished: list[dict] = []
        if self.store.data.get("in_progress") and self.current is None:  # else: this process's own round goes on
            number = self.store.data["in_progress"]["round"]
            _emit(self.events.on_notice, f"resuming: round {number} was interrupted and restarts "
                                         f"({len(self.store.rounds)} finished round(s) kept)")
        while True:
            reason = self.stop_before(rounds)
            if reason:
                break
            record = self.run_round(decider)
            finished.append(record)
            if on_round:
                on_round(record)
            reason = f"{record['decided_by']} asked to stop" if record["decision"].get("stop") else self.stop_before(rounds)
            if reason:  # no plan for a round that will not run: say why the run ends instead
                break
            # The decision, said once (shown even when quiet: it is what the next round changes).
            _emit(self.events.on_notice, f"next, round {record['round'] + 1} ({record['decided_by']}): "
                                         f"{record.get('rationale')}")
        self.store.mark_stopped(reason)
        _emit(self.events.on_notice, f"stopped: {reason}")
        return finished


# -------------------------------------------------------------------- helpers
def _validate_inputs(settings: Settings) -> None:
    """Unknown competitor names and an unusable references folder fail here, not rounds later."""
    from tools.images import list_images
    from tools.providers import PROVIDERS

    unknown = [name for name in settings.competitors if name not in PROVIDERS]
    if unknown:
        raise InputError(f"unknown competitor {unknown[0]!r}",
                         f"use some of: {', '.join(PROVIDERS)} (comma-separated), or 'none'")
    list_images(settings.references)


def _check_same_models(store: RunStore, profile: ModelProfile) -> None:
    """Rounds of one history must be comparable: refuse to append rounds made with other models."""
    saved = store.data.get("profile") or {}
    if not store.rounds or not saved:
        return
    now = profile.describe()
    changed = [k for k in MODEL_KEYS if saved.get(k) != now[k]]
    if changed:
        detail = ", ".join(f"{k} {saved.get(k)!r} → {now[k]!r}" for k in changed)
        raise InputError(f"{store.root} holds rounds made with other models ({detail})",
                         "pass --output-dir DIR for a new results folder, or the same models to resume")


def starting_params(history: dict, defaults: dict) -> dict:
    """The parameters the next round trains with: the interrupted round's (its checkpoints match them),
    else the last finished round's ``next_params``, else ``defaults`` (the original system's history,
    a bare list of rounds, has no next_params)."""
    interrupted = history.get("in_progress") or {}
    if interrupted.get("params"):
        return dict(interrupted["params"])
    rounds = history.get("rounds") or []
    return dict((rounds[-1].get("next_params") if rounds else None) or defaults)


def planned_params(settings: Settings) -> dict:
    """``starting_params`` of the results folder without opening it: no lock, no torch (the chat's /config
    before a session exists). The knobs' defaults depend on the profile's name only, so a stand-in profile
    (no device detection) gives the same ones."""
    from agent.store import peek_history

    stand_in = ModelProfile(settings.profile, settings.base_model, settings.clip_model, "cpu", "fp32", settings.seed)
    history = peek_history(settings.output_dir)
    if history["profile"].get("profile", settings.profile) != settings.profile:
        # another profile's round: the session will discard it (RunStore.discard_round_of_other_models)
        history["in_progress"] = None
    return starting_params(history, default_params(stand_in))


def default_params(profile: ModelProfile) -> dict:
    """The trainer's defaults for ``profile`` plus the knobs the agent adds on top."""
    from tools.training.config import default_train_config  # the dataclass alone: no torch

    config = dataclasses.asdict(default_train_config(profile))
    params = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}
    # validation_images stays on: each checkpoint's validation renders are scored against the references,
    # and the best-scoring checkpoint becomes the round's LoRA (select_best_checkpoint).
    params.setdefault("lora_scale", 1.0)
    params.setdefault("feature_emphasis", [])
    return params


def train_config(profile: ModelProfile, params: dict):
    """A ``TrainConfig`` from the profile's defaults with every matching param applied."""
    from tools.training.trainer import default_train_config

    config = default_train_config(profile)
    names = {f.name for f in dataclasses.fields(config)}
    config = dataclasses.replace(config, **{k: v for k, v in params.items() if k in names})
    if config.lr_warmup_steps >= config.steps:  # fewer steps after an overfitting round: warmup shrinks along
        config = dataclasses.replace(config, lr_warmup_steps=config.steps // 10)
    config.validate(profile)
    return config


def training_dataset(references: Path, analysis: dict, emphasis: list[str],
                     caption_mode: str = "full") -> list[tuple[Path, str]]:
    """(image, caption) pairs from the analysis captions (``caption_mode``), emphasised features first."""
    from tools.scoring.analyzer import captions_for

    captions = captions_for(analysis, caption_mode)
    trigger = analysis.get("trigger_token", "")
    pairs = []
    for name, caption in sorted(captions.items()):
        path = references / name
        if path.is_file():
            pairs.append((path, emphasise(caption, emphasis, trigger)))
    if not pairs:
        raise InputError(f"none of the analysed captions match an image in {references}",
                         "re-run the analysis (aldar analyze --force) after changing the references")
    return pairs


def emphasise(text: str, features: list[str], trigger: str = "") -> str:
    """Put ``features`` right after the trigger token (early tokens weigh most in CLIP's text
    encoder, and SDXL truncates at 77 tokens), without repeating them later."""
    if not features:
        return text
    parts = [p.strip() for p in text.split(",") if p.strip()]
    wanted = [f for f in features if f.strip()]
    rest = [p for p in parts if p.lower() not in {f.lower() for f in wanted}]
    head = [rest.pop(0)] if rest and trigger and rest[0].lower().startswith(trigger.lower()) else []
    return ", ".join(head + wanted + rest)


def overfitting_signals(report: ComparisonReport) -> Overfitting:
    """Signs that the LoRA copies references: its closest image to one single reference
    (CLIP cosine and SSIM), how many of its images are reference copies, and the variety of its
    own images, all from the comparison report."""
    rows = [row for row in report["images"] if row["generator"] == LORA]
    lora = report["generators"].get(LORA)
    return {"max_reference_clip": max((row["clip_max"] for row in rows), default=None),
            "max_reference_ssim": max((row["ssim"] for row in rows), default=None),
            "reference_copies": sum(bool(row.get("reference_copy")) for row in rows),
            "variety": lora["variety"] if lora else None}


def training_curve(train: dict) -> TrainingCurve:
    """Where the round's validation quality peaked among its checkpoints: the best-scoring of two or more being
    the last one means the quality was still rising when training stopped (what a kohya user reads off the
    sample images). Read from the trainer's record, which may come from an older or hand-edited history: a
    score without a finite step or quality counts as unscored."""
    from tools.training.lora_files import best_checkpoint  # imports torch; a round has trained by now

    checkpoints = [s for s in train.get("checkpoint_scores") or []
                   if isinstance(s, dict) and finite_number(s.get("step")) is not None]
    scored = [{"step": int(s["step"]), "quality": s["quality"]} for s in checkpoints
              if finite_number(s.get("quality")) is not None]
    best = best_checkpoint(scored)
    # The last checkpoint of all, scored or not: a peak before an unscored last checkpoint is no rise at the end.
    last_step = max((int(s["step"]) for s in checkpoints), default=None)
    steps = finite_number(train.get("steps"))
    return {"steps": int(steps) if steps is not None else None, "best_step": best["step"] if best else None,
            "scored_checkpoints": len(scored),
            "still_rising": len(scored) >= 2 and best is not None and best["step"] == last_step}


def scores_by_generator(report: ComparisonReport) -> dict[str, GeneratorScores]:
    """generator → {quality, quality_std, clip, features, ssim, band, count, reference_copies} (means)
    from a comparison report."""
    return {name: {"quality": entry["quality"]["mean"], "quality_std": entry["quality"]["std"],
                   "clip": entry["clip"]["mean"], "features": entry["features"]["mean"],
                   "ssim": entry["ssim"]["mean"], "band": entry["band"], "count": entry["count"],
                   "reference_copies": entry.get("reference_copies", 0)}
            for name, entry in (report.get("generators") or {}).items()}


def round_record(state: RoundState, store: RunStore, profile: dict, decision: Decision, applied: dict,
                 notes: list[str], next_params: dict) -> RoundRecord:
    """The history's record of a finished round. Tolerant of missing stages: a round may be recorded
    before it was scored (then it has no scores)."""
    report = state.report or {}
    feedback = state.feedback or {}
    ceiling = report.get("ceiling")
    train = state.train or {}
    return {
        "round": state.number,
        "finished_at": iso_timestamp(),
        "params": state.params,
        "train": {"steps": train.get("steps"), "final_loss": train.get("final_loss"),
                  "interrupted": train.get("interrupted"), "checkpoint_scores": train.get("checkpoint_scores") or [],
                  "chosen_checkpoint": train.get("chosen_checkpoint")},
        "scores": scores_by_generator(report),
        "ranking": report.get("ranking", []),
        "ceiling": {"quality": ceiling["quality"]["mean"], "clip": ceiling["clip"]["mean"],
                    "features": ceiling["features"]["mean"], "ssim": ceiling["ssim"]["mean"]} if ceiling else None,
        "lora_score": feedback.get("lora_score"),
        "band": feedback.get("band"),
        "best_competitor": feedback.get("best_competitor"),
        "score_gap": feedback.get("score_gap"),
        "overfitting": feedback.get("overfitting"),
        "decision": {"adjustments": applied, "requested": decision.adjustments, "clamped": notes,
                     "stop": decision.stop, **({"llm_text": decision.llm_text} if decision.llm_text else {}),
                     **({"already_tried": decision.already_tried} if decision.already_tried else {})},
        "rationale": decision.rationale,
        "decided_by": decision.decided_by,
        "next_params": next_params,
        "prompts": state.prompts,
        "skipped_competitors": state.skipped,
        "paths": {"run_dir": store.relative(train.get("run_dir")), "lora": store.relative(train.get("lora_path")),
                  "kohya_lora": store.relative(train.get("kohya_path")),
                  "comparison_report": store.relative(state.report_path),
                  "feedback": store.relative(state.feedback_path),
                  "images": {name: [store.relative(p) for p in paths] for name, paths in (state.images or {}).items()}},
        "timings_s": {k: round(v, 4) for k, v in state.timings.items()},
        "compute_s": {k: round(v, 4) for k, v in state.compute.items()},
        "profile": profile,
    }


def how_to_go_on(reason: str) -> str:
    """What lets rounds run again after ``stop_reason`` gave ``reason`` (the setting that stopped them)."""
    if reason.startswith("target reached"):
        return "raise target_score ([rounds] in aldar.toml, or ALDAR_TARGET_SCORE) to train further"
    if reason.startswith("no improvement"):
        return "raise patience ([rounds] in aldar.toml, or ALDAR_PATIENCE) to keep trying"
    return "ask for more rounds (aldar run --rounds N)"


def stop_reason(history: list[dict], rounds: int, target: float, patience: int) -> str:
    """Why no further round should run, or '' to go on (the tiny profile too: its toy-world scores mean something)."""
    if len(history) >= rounds:
        if len(history) == rounds:
            return f"round limit reached ({rounds} of {rounds})"
        # More finished rounds than the limit: the limit counts the rounds already in the folder.
        return f"round limit reached: {len(history)} rounds are finished already, the limit is {rounds}"
    scored = ranked_rounds(history)
    if not scored:
        return ""
    last = scored[-1]
    if last["lora_score"] >= target:
        return f"target reached: round {last['round']} scored {last['lora_score']:.3f} ≥ {target}"
    best = best_round(history)
    since_best = sum(1 for r in scored if r["round"] > best["round"])
    if since_best >= patience:
        return f"no improvement for {since_best} round(s) since round {best['round']} (patience {patience})"
    return ""
