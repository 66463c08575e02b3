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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from agent.rounds.decision import Decider, Decision, already_trained
from agent.rounds.documents import Round, feedback_of
from agent.rounds.knobs import bounds_for, clamp_adjustments, params_text
from agent.rounds.payoff import (budget_capped, run_stopped_because, step_budget, steps_left, warm_config,
                                 warm_start_plan, why_no_round_pays)
from agent.rounds.params import (checkpoint_judges, default_params, emphasise, session_params, starting_params,
                                 train_config, training_dataset, validate_inputs)
from agent.rounds.ranking import best_round, stop_reason
from agent.rounds.recording import SUITE_SCORES, RoundState, TrainedRound, reusable_base_suite, round_record, suite_base_key
from agent.rounds.records import BASE, LORA, lora_spread, overfitting_signals, training_curve
from agent.rounds.store import RunStore
from agent.words import and_words
from tools.atomic import atomic_write_json, read_json_object
from tools.errors import AldarError, InputError, ResumeMismatchError
from tools.models import ModelProfile, resolve_profile
from tools.scoring.records import Analysis
from tools.settings import Settings
from tools.timestamps import timestamp

if TYPE_CHECKING:  # annotations only: the trainer loads when a round trains
    from tools.training.config import TrainConfig

WARM_START = "warm_start.json"  # in a round's run folder: the checkpoint it continues (kept for its resume)


@dataclass
class SessionEvents:
    """What a ``Session`` reports while it works (as ``LoopEvents`` for the LLM loop); every hook is
    optional. The session never prints: ``aldar run`` and the REPL render these."""

    on_status: Callable[[str], None] | None = None  # progress of a stage: "round 2: training …"
    on_notice: Callable[[str], None] | None = None  # worth showing even in quiet mode: a round resumes
    on_warning: Callable[[str], None] | None = None  # a problem the run survives (a clamp, a skipped competitor)
    on_missing_key: Callable[[str], None] | None = None  # a competitor without its key; said every round
    # The history changed: a round was recorded, or a resumed session found recorded rounds (a kill may have
    # left their report behind). The report is written by whoever listens (agent.views.report.ReportWriter).
    on_round_recorded: Callable[["Session"], None] | None = None


def _emit(hook: Callable[[str], None] | None, message: str) -> None:
    if hook is not None:
        hook(message)


class Session:
    """Drives rounds over one results folder; holds its lock until ``close()``."""

    def __init__(self, settings: Settings, *, quiet: bool = False, events: SessionEvents | None = None) -> None:
        from tools.character import check_saved_analysis

        validate_inputs(settings)  # before the lock and any folder: bad input costs nothing
        # the saved analysis' trigger token and name where the settings only derived them; another
        # character's analysis is refused here, before anything is written
        settings = check_saved_analysis(settings)
        self.settings = settings
        self.quiet = quiet  # no progress bars from the capabilities
        self.events = events or SessionEvents()
        self.references = Path(settings.references)
        self.profile: ModelProfile = resolve_profile(settings)
        from tools.character import character_warnings
        from tools.images import skipped_note

        if skipped := skipped_note(self.references):  # said once per session: the folder is read many times
            _emit(self.events.on_warning, skipped)
        for line in character_warnings(settings):
            _emit(self.events.on_warning, line)

        self.default_params = session_params(settings, self.profile)
        self.step_budget = step_budget(settings, default_params(self.profile))
        self.bounds = bounds_for(self.default_params, self.profile.is_tiny)
        self.store = RunStore(settings.output_dir, self.profile.describe())
        try:
            self.store.refuse_other_models(self.profile.describe())
            discarded = self.store.discard_round_of_other_models()
        except BaseException:
            self.store.close()
            raise
        if discarded:
            _emit(self.events.on_notice, discarded)
        self.params: dict = starting_params(self.store.state, self.default_params)
        self.analysis: Analysis | None = None
        self.current: RoundState | None = None
        # Stage seconds spent before a round began (the analysis, made before round 1 is marked started so that
        # a taxonomy that fits nothing leaves no half-begun round): the next round counts them as its own.
        self._pending = RoundState(number=0, params={}, stamp="")
        self.competitors: list[str] = list(settings.competitors)
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

    def history(self) -> list[Round]:
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
            state = self.current or self._pending
            state.timings[name] = state.timings.get(name, 0.0) + time.perf_counter() - started

    def _compute(self, stage: str, started: float) -> None:
        state = self.current or self._pending
        state.compute[stage] = state.compute.get(stage, 0.0) + time.perf_counter() - started

    def _round(self) -> RoundState:
        """The round in progress, begun (and marked in the history) on first use."""
        if self.current is None:
            number = self.next_round_number
            self.current = RoundState(number=number, params=dict(self.params), stamp=RunStore.timestamp(number),
                                      timings=self._pending.timings, compute=self._pending.compute)
            self._pending = RoundState(number=0, params={}, stamp="")
            self.store.begin_round(number, self.current.params)
        return self.current

    # ---------------------------------------------------------------- analyze
    def analyze(self, force: bool = False) -> Analysis:
        """The feature analysis of the references: reused from settings.analysis_path when it
        matches the references' hashes and the CLIP model, else computed and saved there."""
        if self.analysis is not None and not force:
            return self.analysis
        from tools.scoring.analyzer import analyze_references, reusable_analysis
        from tools.scoring.taxonomy import load_taxonomy

        cached_path = Path(self.settings.analysis_path)
        with self._stage("analyze"):
            taxonomy = load_taxonomy(self.settings.taxonomy_path())
            # another character's analysis (trigger token, pictures) is refused here, before anything is written
            cached = None if force else reusable_analysis(cached_path, self.references, self.settings.trigger_token,
                                                          self.profile.clip_model, taxonomy)
            if cached:
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
                for line in self.analysis.get("warnings") or []:  # said as it is made, as its key features
                    self._say(f"analysis: {line}")
        return self.analysis

    # ---------------------------------------------------------------- train
    def round_train_config(self, warm: dict | None = None) -> TrainConfig:
        """The trainer's config for ``self.params``, its checkpoints judged as the round will draw its images;
        with ``warm`` (``warm_start``) it continues that checkpoint for the steps left of ``params['steps']``;
        within what the run's step budget (``payoff.step_budget``) leaves."""
        config = warm_config(train_config(self.profile, self.params), warm, self.store.absolute)
        config = budget_capped(config, steps_left(self.step_budget, self.store.rounds), self.events.on_notice)
        if not config.validation_prompt:  # checkpoints are judged on the prompt the round will generate with
            config = dataclasses.replace(config, validation_prompt=self.prompt())
        # ... and at its guidance and negative prompt (none on tiny, SDXL's default otherwise)
        from tools.generation.sampling import SamplingSpec

        return config.judged_as_drawn(SamplingSpec.from_settings(self.settings))

    def train(self, adjustments: dict | None = None) -> TrainedRound:
        """Train this round's LoRA with ``self.params`` (after ``adjustments``, clamped)."""
        from tools.training.lora_files import checkpoint_step
        from tools.training.prior import with_class_prompt
        from tools.training.trainer import train_lora

        if adjustments:
            self.apply(adjustments)
        analysis = self.analyze()
        state = self._round()
        state.params = dict(self.params)
        run_dir = self.store.round_run_dir(state.number)
        checkpoint = self._latest_checkpoint(state.number)
        resumed_from = checkpoint_step(checkpoint) if checkpoint else 0
        # A resumed round continues as it began (warm or fresh): its own record of that, not a new choice.
        warm = read_json_object(run_dir / WARM_START) if checkpoint else self.warm_start(state.number)
        if warm and not checkpoint:
            atomic_write_json(run_dir / WARM_START, warm)
        config = with_class_prompt(self.round_train_config(warm), analysis)  # prior preservation's class
        dataset = training_dataset(self.references, analysis, self.params.get("feature_emphasis") or [],
                                   self.params.get("caption_mode", "full"))
        # Each checkpoint is scored as the round will score the LoRA; the best (checkpoint_judges) becomes its LoRA.
        judges = checkpoint_judges(self.settings, self.references, self.profile, analysis, self.suite)
        if resumed_from:  # shown even when quiet: the round does not start from scratch
            _emit(self.events.on_notice, f"round {state.number}: resuming training from step {resumed_from} "
                                         f"({self.store.relative(checkpoint)})")
        with self._stage("train", params=state.params):
            self._say(f"round {state.number}: training {params_text(self.params)} → {self.store.relative(run_dir)}")
            started = time.perf_counter()
            try:
                result = train_lora(config, self.profile, dataset, run_dir, quiet=self.quiet, **judges)
            except ResumeMismatchError as error:
                # Checkpoints of this round made with other settings (e.g. changed by hand): keep them
                # aside and train the round afresh rather than stop the run.
                aside = run_dir.with_name(f"{run_dir.name}_stale_{timestamp()}")
                run_dir.rename(aside)
                _emit(self.events.on_warning,
                      f"{error.problem}; kept it as {self.store.relative(aside)} and retrained the round")
                resumed_from = 0
                if warm:
                    atomic_write_json(run_dir / WARM_START, warm)
                result = train_lora(config, self.profile, dataset, run_dir, quiet=self.quiet, **judges)
            self._compute("train", started)
            state.compute["checkpoint_suite"] = result.edit_check_s  # inside train's seconds: the suite's cost
        if result.interrupted:  # Ctrl-C inside the trainer: its checkpoint is saved, the round stays unfinished
            raise KeyboardInterrupt
        for note in getattr(result, "notes", []):  # masks resized or missing: said once per round
            _emit(self.events.on_notice, f"round {state.number}: {note}")
        state.train = {"run_dir": result.run_dir, "lora_path": result.lora_path,
                       "kohya_path": getattr(result, "kohya_path", None), "steps": result.steps,
                       "final_loss": result.final_loss, "interrupted": result.interrupted,
                       "resumed_from_step": resumed_from, "checkpoint_scores": result.checkpoint_scores,
                       "chosen_checkpoint": result.chosen_checkpoint, "warm_start": warm or None,
                       "stopped_early": getattr(result, "stopped_early", "")}
        state.images = state.report = state.feedback = None  # they came from the previous LoRA
        state.suite_images = state.suite_report = None
        chosen = result.chosen_checkpoint or {}
        self._say(f"round {state.number}: trained {result.steps} steps, final loss {result.final_loss:.4f}; "
                  f"LoRA = step {chosen.get('step', result.steps)} ({chosen.get('why', 'last step')})")
        return state.train

    def warm_start(self, number: int) -> dict | None:
        """Where round ``number`` continues from (``payoff.warm_start_plan``), or None for a fresh LoRA."""
        return warm_start_plan(self.store.rounds, self.params, train_config(self.profile, self.params), self.profile,
                               number, self.settings.round_ranking, self.store, self.events.on_notice)

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

    def finish_scored_round(self, decision: Decision) -> Round | None:
        """Record the round in progress if it has been scored (a manual train → generate → score),
        so that the next ``train`` starts a new round; None when there is nothing to record."""
        if self.current is not None and self.current.feedback is not None:
            return self.finish_round(decision)
        return None

    def finish_scored_round_before_training(self, adjustments: dict, how: str, decided_by: str) -> Round | None:
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
        from the same prompts and seeds, then the prompt suite's. Returns generator → list of image paths."""
        from tools.generation.sampling import SamplingSpec
        from tools.providers import configured_providers

        state = self._round()
        if state.train is None:
            raise InputError(f"round {state.number} has no trained LoRA yet", "run the train step first")
        # The base model draws the prompt without the emphasis phrases (they stress what the LoRA learns, and would
        # move the base too): the LoRA's lead then measures the LoRA. Prompts given here are drawn as given.
        plain = prompts or [self.prompt(emphasis=False)]
        prompts = prompts or [self.prompt()]
        sampling = SamplingSpec.from_settings(self.settings)
        with self._stage("generate"):
            providers, skipped = configured_providers(self.settings, self.competitors)
            state.skipped = list(skipped)
            for line in skipped:
                _emit(self.events.on_missing_key, line)
            drawn = self._draw(state, prompts, providers, sampling, "generate", {}, base_prompts=plain)
        # dict.fromkeys: a prompt given twice groups a provider's images twice; a competitor whose every image
        # was safety-filtered has nothing to score.
        images = {name: list(dict.fromkeys(path for group in groups for path in group))
                  for name, groups in drawn.items() if any(groups)}
        state.images, state.prompts = images, list(prompts)
        state.base_prompts = list(plain)
        state.report = state.feedback = None  # they scored the previous images
        self._generate_suite(state, [p for p in providers if p.name in images], sampling)
        return images

    def _draw(self, state: RoundState, prompts: list[str], providers: list, sampling, stage: str,
              drawn: dict[str, list[list[Path]]], base_prompts: list[str] | None = None) -> dict[str, list[list[Path]]]:
        """The base, the LoRA and each provider on ``prompts`` (those not in ``drawn`` already): generator →
        images per prompt, image ``i`` of every prompt at seed + i; the suite's in batches of ``suite_batch_size``,
        the own prompt's one image at a time, as every figure so far was measured.
        A failing provider sits out (said once, in ``state.skipped``). The base draws ``base_prompts`` where given
        (the own prompt without the emphasis phrases), one for one with ``prompts``."""
        from tools.generation.local import generate_local, suite_batch_size
        from tools.providers import generate_with_provider

        suite = stage == "generate_suite"
        folder = self.store.round_suite_dir if suite else self.store.round_images_dir
        for name, lora in ((BASE, None), (LORA, state.train["lora_path"])):
            if name in drawn:  # the base's suite images, reused
                continue
            self._say(f"round {state.number}: {'drawing the prompt suite with' if suite else 'generating'} {name} …")
            started = time.perf_counter()
            texts = base_prompts if name == BASE and base_prompts else prompts
            made = generate_local(self.profile, texts, folder(state.number, name), sampling, lora_path=lora,
                                  lora_scale=float(self.params.get("lora_scale", 1.0)), name=name, quiet=self.quiet,
                                  batch_size=suite_batch_size(self.profile, len(texts), sampling.images_per_prompt)
                                  if suite else 1)
            self._compute(stage, started)
            per = sampling.images_per_prompt  # in prompt order, per images each
            drawn[name] = [[image.path for image in made[i * per:(i + 1) * per]] for i in range(len(prompts))]
        for provider in providers:
            self._say(f"round {state.number}: asking {provider.name} …")
            started = time.perf_counter()
            try:
                made = generate_with_provider(provider, prompts, folder(state.number, provider.name),
                                              sampling.images_per_prompt, sampling.seed, skipped=state.skipped,
                                              quiet=self.quiet)
            except AldarError as exc:  # one failing competitor must not end the round
                what = "the prompt suite" if suite else "this round"
                _emit(self.events.on_warning, f"{provider.name} skipped {what}: {exc}")
                state.skipped.append(f"{provider.name}{' (suite)' if suite else ''}: {exc}")
                continue
            finally:
                self._compute(stage, started)
            drawn[provider.name] = [[image.path for image in made if image.prompt == text] for text in prompts]
        return drawn

    def suite(self) -> list:
        """The round's prompt suite (``tools.scoring.suite``): deterministic from the analysis and the seed."""
        from tools.scoring.suite import build_suite

        if not self.settings.suite_size:
            return []
        return build_suite(self.analyze(), self.settings.seed, self.settings.suite_size)

    def _generate_suite(self, state: RoundState, providers: list, sampling) -> None:
        """The LoRA, the base and each competitor that drew this round on the suite, ``images_per_prompt`` images
        per prompt. The base's suite images depend on the prompts, the sampling and the models only, so a round
        reuses an earlier round's (same key) instead of drawing them again."""
        suite = self.suite()
        state.suite, state.suite_images, state.suite_base_from = suite or None, None, None
        if not suite:
            return
        texts = [prompt.text for prompt in suite]
        state.suite_key = suite_base_key(texts, sampling, self.profile.describe())
        drawn: dict[str, list[list[Path]]] = {}
        with self._stage("generate_suite"):
            if (reused := reusable_base_suite(self.store, state.suite_key, len(texts))) is not None:
                state.suite_base_from, drawn[BASE] = reused
            state.suite_images = self._draw(state, texts, providers, sampling, "generate_suite", drawn)

    def keyed_competitors(self) -> list[str]:
        """The competitors that will really be asked (their API key is set): the paid ones."""
        from tools.providers import configured_providers

        ready, _ = configured_providers(self.settings, self.competitors)
        return [provider.name for provider in ready]

    def prompt(self, emphasis: bool = True) -> str:
        """The test prompt — the test_prompt setting, else the trigger token and key features the analysis
        found — with the emphasised features right after the trigger token (``emphasis=False``: without them,
        what the base model draws)."""
        from tools.character import prompt_from_analysis

        text = self.settings.test_prompt or prompt_from_analysis(self.analyze())
        return emphasise(text, (self.params.get("feature_emphasis") or []) if emphasis else [],
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
            feedback = build_feedback(report, LORA, BASE)
            feedback["overfitting"] = overfitting_signals(report)
            feedback["lora_spread"] = lora_spread(report)
            if state.train:
                ceiling = report["ceiling"]["quality"]["mean"] if report["ceiling"] else None
                feedback["training"] = training_curve(state.train, ceiling, state.timings.get("train"))
            self._compute("score", started)
        suite_report = self._score_suite(state)
        if suite_report is not None:
            feedback.update({name: suite_report[name] for name in SUITE_SCORES})
            feedback["suite_prompts"] = suite_report["prompts"]
        with self._stage("store"):
            report["round"] = feedback["round"] = state.number
            if suite_report is not None:
                suite_report["round"] = state.number
                state.suite_report_path = self.store.write_suite_report(suite_report, state.number)
            state.report_path = self.store.write_comparison_report(report, state.stamp)
            state.feedback_path = self.store.write_feedback(feedback, state.stamp)
        state.report, state.feedback = report, feedback_of(feedback)  # what the deciders read, typed once
        return {"report": report, "feedback": state.feedback, "report_path": state.report_path,
                "feedback_path": state.feedback_path}

    def _score_suite(self, state: RoundState) -> dict | None:
        """Identity, editability and bleed of every generator on the round's suite (None: no suite drawn)."""
        from tools.scoring.suite import score_suite

        if not state.suite or not state.suite_images:
            return None
        with self._stage("score_suite"):
            count = sum(len(group) for groups in state.suite_images.values() for group in groups)
            self._say(f"round {state.number}: scoring the prompt suite ({count} images) …")
            started = time.perf_counter()
            state.suite_report = score_suite(state.suite, state.suite_images, self.references, self.profile,
                                             self.analyze(), lora=LORA, base=BASE)
            self._compute("score_suite", started)
        return state.suite_report

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
        unpaid = why_no_round_pays(state.feedback, self.history(), self.settings, self.step_budget,
                                   int((state.train or {}).get("steps") or 0), self.params)
        if unpaid and not decision.stop and repeated is None:
            decision.stop = True
            decision.rationale += " " + unpaid
        if repeated is not None and not decision.stop:
            decision.stop = True
            decision.rationale += (f" Round {repeated} already trained these parameters (training them again would "
                                   "only reproduce its LoRA), so the run stops here.")
        return decision

    def finish_round(self, decision: Decision) -> Round:
        """Apply ``decision`` to the params of the next round and append this round to the history."""
        state = self._round()
        with self._stage("store"):
            applied, notes = clamp_adjustments(self.params, decision.adjustments, self.bounds)
            next_params = {**self.params, **applied}  # self.params: the trained ones plus any later apply()
            record = round_record(state, self.store, self.profile.describe(), decision, applied, notes, next_params)
            record = self.store.finish_round(record)
            # The round is recorded: from here on a Ctrl-C must not leave it as the round in progress.
            self.params = dict(next_params)
            self.current = None
            self._update_best()
            self._round_recorded()
        return record

    def _derive_from_finished_rounds(self) -> None:
        """What the finished rounds imply — best round, best_lora/, report and chart — made true again.

        A kill between recording a round and writing these (or during one of them) leaves the history
        ahead of them; with the round limit reached no later round would ever redo them.
        """
        if self.store.rounds:
            self._update_best()
            self._round_recorded()

    def _update_best(self) -> None:
        best = best_round(self.store.rounds, self.settings.round_ranking)
        if best is not None:
            if not self.store.best_lora_holds(best):
                self.store.mark_best(best)

    def _round_recorded(self) -> None:
        if self.events.on_round_recorded is not None:
            self.events.on_round_recorded(self)

    def run_round(self, decider: Decider) -> Round:
        """analyze (once) → train → generate → score → feedback → decide → record.

        Stages this round already finished in this process (``/train``, ``/generate``, ``/score``
        or the chat's tools before ``/auto``) are not run again: no second training, no second paid call.
        """
        self.analyze()  # first: an analysis that fails (a taxonomy that fits nothing) leaves no round begun
        state = self._round()
        reused = [stage for stage, done in (("LoRA", state.train), ("images", state.images), ("scores", state.feedback))
                  if done]
        if reused:  # said even when quiet: otherwise "/auto 1" after "/train" looks as if it trained nothing
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
        return stop_reason(self.history(), rounds, self.settings.target_score, self.settings.patience,
                           self.settings.round_ranking)

    def run_rounds(self, rounds: int, decider: Decider,
                   on_round: Callable[[Round], None] | None = None) -> list[Round]:
        """Run rounds until ``rounds`` are in the history, the target band is reached, or
        ``settings.patience`` rounds pass without improvement. Finished rounds are kept on resume;
        ``on_round(record)`` is called after each (``aldar run`` prints the ranking there)."""
        finished: list[Round] = []
        interrupted = self.store.state.in_progress
        if interrupted is not None and self.current is None:  # else: this process's own round goes on
            _emit(self.events.on_notice, f"resuming: round {interrupted.round} was interrupted and restarts "
                                         f"({len(self.store.rounds)} finished round(s) kept)")
        while True:
            reason = self.stop_before(rounds)
            if reason:
                break
            record = self.run_round(decider)
            finished.append(record)
            if on_round:
                on_round(record)
            reason = run_stopped_because(record) if record.decision.stop else self.stop_before(rounds)
            if reason:  # no plan for a round that will not run: say why the run ends instead
                break
            # The decision, said once (shown even when quiet: it is what the next round changes).
            _emit(self.events.on_notice, f"next, round {record.round + 1} ({record.decided_by}): "
                                         f"{record.rationale}")
        self.store.mark_stopped(reason)
        _emit(self.events.on_notice, f"stopped: {reason}")
        return finished
