"""The shape of the source, counted on its import graph: what a newcomer can rely on when finding their room.

Every import counts, the lazy ones inside functions and those under ``if TYPE_CHECKING:`` too: a circle
drawn only for the type checker still ties two modules together for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "tools")
FLAT_AGENT_LIMIT = 400  # lines of a module directly in agent/ (the rest live in agent/<capability>/)
MODULE_LIMIT = 600  # lines of any module outside tools/world/ (the world build is a recipe of data)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (``from a.b import c`` counts ``a.b`` and ``a.b.c`` when a module)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.level == 0, f"{name}: relative import"  # the project imports absolutely
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in known and target != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_circles_are_found_when_there_are_some():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_type_checking_imports_included():
    graph = import_graph()
    assert len(graph) > 60  # the walk found the project
    assert circles(graph) == []


def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_agent_is_grouped_into_packages_with_small_flat_modules():
    flat = {path.name: line_count(path) for path in (ROOT / "agent").glob("*.py") if path.name != "__init__.py"}
    packages = sorted(path.name for path in (ROOT / "agent").iterdir() if (path / "__init__.py").is_file())
    assert packages == ["commands", "llm", "rounds", "views"]
    assert len(flat) <= 4, flat  # the entry point and process-wide helpers only
    assert {name: lines for name, lines in flat.items() if lines > FLAT_AGENT_LIMIT} == {}


def test_no_module_over_600_lines_the_world_build_included():
    long = {name: line_count(path) for name, path in modules().items() if line_count(path) > MODULE_LIMIT}
    assert long == {}


# Where training_history.json and the feedback files are read as dicts: the store and its loader.
LOADER = ("agent.rounds.store", "agent.rounds.documents")


def document_keys() -> set[str]:
    """The keys only the round record and the feedback document have: the fields of the loader's typed blocks
    (``agent.rounds.documents``) and of the feedback's TypedDicts, less the keys of every other dict the agent
    reads — the analysis, the comparison report and its parts (``tools.scoring.records``), the trainer's result
    and its checkpoints (``TrainedRound``, ``CheckpointScore``, ``ChosenCheckpoint``) and the knobs of a ``params``
    mapping. A ``.get`` with one of these reads a history or feedback document, unless ``NOT_DOCUMENTS`` names
    its receiver."""
    import dataclasses
    import typing

    import agent.rounds.documents as documents
    import tools.scoring.records as scoring
    from agent.rounds.knobs import NAMES
    from agent.rounds.recording import TrainedRound
    from agent.rounds.records import CheckpointScore, ChosenCheckpoint

    feedback_parts = (scoring.Feedback, scoring.MetricGap, scoring.FeatureGap, scoring.Recommendation,
                      scoring.ReferenceCopy)
    keys = {f.name for value in vars(documents).values() if dataclasses.is_dataclass(value)
            and value.__module__ == documents.__name__ for f in dataclasses.fields(value)}
    keys |= {key for part in feedback_parts for key in typing.get_type_hints(part)}
    others = {key for value in vars(scoring).values() if typing.is_typeddict(value) and value not in feedback_parts
              for key in typing.get_type_hints(value)}
    trainer = {key for shape in (TrainedRound, CheckpointScore, ChosenCheckpoint) for key in typing.get_type_hints(shape)}
    return keys - others - trainer - set(NAMES) - {"written"}  # written: which keys a block's file had


# Dicts that share a word with the documents' keys and are not documents: (module, receiver) → what it is.
NOT_DOCUMENTS = {
    ("agent.llm.client", "inner"): "an OpenAI-style answer's choice (HTTP JSON): 'message'",
    ("agent.llm.decider", "proposal or {}"): "the arguments of the model's propose_adjustment call: 'rationale'",
    ("agent.llm.tools", "scene"): "a scene of a written story: 'text'",
    ("agent.rounds.recording", "state.timings"): "the round's stage timer, keyed by stage: 'train'",
    ("agent.rounds.session", "state.timings"): "the round's stage timer, keyed by stage: 'train'",
    ("agent.rounds.records", "warm"): "the trainer's warm-start plan (payoff.warm_start_plan): 'lora_steps_before'",
}


def test_the_history_and_feedback_files_are_read_by_the_store_alone():
    """training_history.json and the rounds' feedback files are read in agent/rounds/store.py, and turned into
    typed objects once by its loader, agent/rounds/documents.py (defaults of older files filled there). Outside
    those two modules, in agent/:

    - no module names the files (``HISTORY_FILE``, their names, ``round_feedback`` / ``read_feedback`` but in the
      LLM decider, which reads an earlier round's feedback through the store's function);
    - no ``.get("<key>")`` with a key only these documents have (``document_keys``): that would be a raw record or
      feedback dict read outside the loader. ``.get`` on other dicts — os.environ, an HTTP or tool-call JSON, the
      analysis, the comparison or suite report, the trainer's result, kwargs, a ``params`` knob mapping — is fine:
      their keys are not in that set;
    - a record's round number is never guessed with ``.get("round")``: the loader refused a history without one.
    """
    keys = document_keys()
    assert {"lora_score", "score_gap", "metric_gaps", "overfitting", "decided_by", "suite_prompts"} <= keys
    readers, guessed, raw, excused = [], [], [], set()
    for name, path in modules().items():
        if not name.startswith("agent.") or name in LOADER:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Name) and node.id in ("HISTORY_FILE", "round_feedback", "read_feedback")
                    and name != "agent.llm.decider"):
                readers.append(f"{name}: {node.id}")
            if isinstance(node, ast.Constant) and node.value in ("training_history.json", "feedback_*.json"):
                readers.append(f"{name}: {node.value}")
            if constant_get(node) == "round" and "feedback" not in ast.unparse(node.func.value):
                guessed.append(f"{name}:{node.lineno}")
        found = raw_document_reads(name, tree, keys)
        raw += [read for read in found if read[:2] not in NOT_DOCUMENTS]
        excused |= {read[:2] for read in found if read[:2] in NOT_DOCUMENTS}
    assert readers == [] and guessed == [] and raw == []
    assert excused == set(NOT_DOCUMENTS)  # an excuse no code needs any more is taken out


def constant_get(node: ast.AST) -> object:
    """The key of a ``x.get("key", ...)`` call, else None."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and node.args and isinstance(node.args[0], ast.Constant)):
        return node.args[0].value
    return None


def raw_document_reads(name: str, tree: ast.AST, keys: set[str]) -> list[tuple[str, str, int]]:
    """(module, receiver, line) of every ``.get("<document key>")`` in ``tree``."""
    return [(name, ast.unparse(node.func.value), node.lineno) for node in ast.walk(tree) if constant_get(node) in keys]


def test_raw_reads_of_a_record_or_a_feedback_are_found_and_other_dicts_are_not():
    keys = document_keys()
    code = ast.parse("record.get('lora_score'); (feedback.get('training') or {}).get('still_rising')\n"
                     "os.environ.get('HOME'); params.get('steps'); report.get('generators'); kwargs.get('quality')")
    assert [(receiver, line) for _, receiver, line in raw_document_reads("m", code, keys)] == [
        ("record", 1), ("feedback.get('training') or {}", 1), ("feedback", 1)]


def test_the_thresholds_the_policy_decides_by_reach_the_llm_and_the_tables_from_their_names(monkeypatch):
    """The numbers the rule policy decides by (a missed feature, a copy, likeness, the suite's limits, its steps)
    are stated to the LLM by the feedback and knob guides and shown in the suite table: all derived from the
    named constants, so changing one changes every place that states it."""
    from agent.llm import prompts
    from agent.rounds import policy, records
    from agent.rounds.knobs import SAFE_BOUNDS
    from agent.views.render import suite_scores
    from tools.settings import Settings

    odd = {"MISSED_PASS_RATE": 0.37, "COPY_CLIP": 0.931, "COPY_SSIM": 0.811, "LOW_VARIETY": 0.041,
           "IDENTITY_OK": 0.57, "EDITABILITY_VS_BASE": 0.77, "BLEED_HIGH": 0.061, "STEP_DOWN": 0.66,
           "STEP_UP": 1.44, "LR_DOWN": 0.44, "RANK_UP": 3, "MAX_EMPHASIS": 5}
    for name, value in odd.items():
        monkeypatch.setattr(policy, name, value)
    monkeypatch.setattr(records, "LIKENESS", 0.83)
    guide = prompts.decider_system_prompt(Settings(), SAFE_BOUNDS)
    for phrase in ("pass rate below 0.37 counts as missed", "CLIP cosine ≥ 0.931 and SSIM ≥ 0.811",
                   "`overfitting.variety` < 0.041", "at 83 % of the reference", "Below 0.57: the character",
                   "Below 0.77 ×", "above 0.061 the LoRA", "×0.66 … ×1.44", "(×0.44)", "(×3)", "up to 5 feature"):
        assert phrase in guide, phrase
    assert "$" not in guide  # every placeholder filled
    import agent.views.render as render

    monkeypatch.setattr(render, "EDITABILITY_VS_BASE", 0.77)
    monkeypatch.setattr(render, "BLEED_HIGH", 0.061)
    table = suite_scores({"round": 1, "suite": {"scores": {"identity": {"score": 0.7}, "editability": {"rate": 0.9},
                                                            "bleed": {"score": 0.01}}}})
    assert table.rows[1][3].startswith("≥ 0.77 × base") and table.rows[2][3] == "≤ 0.061"


def test_the_typed_records_read_only_keys_the_written_shapes_declare():
    """agent/rounds/documents.py (what the code reads) and the TypedDicts of the JSON written (agent/rounds/records.py,
    tools/scoring/records.py) describe one document twice: every field the loader reads is a key the writer's
    shape declares, so neither drifts unnoticed."""
    import dataclasses
    import typing

    import agent.rounds.documents as read
    import agent.rounds.records as written
    import tools.scoring.records as scoring

    pairs = [(read.Round, written.RoundRecord), (read.RoundTrain, written.RoundTrain),
             (read.RoundDecision, written.RoundDecision), (read.RoundPaths, written.RoundPaths),
             (read.GeneratorScores, written.GeneratorScores), (read.Ceiling, written.CeilingScores),
             (read.Overfitting, written.Overfitting), (read.TrainingCurve, written.TrainingCurve),
             (read.CheckpointScore, written.CheckpointScore), (read.ChosenCheckpoint, written.ChosenCheckpoint),
             (read.RoundFeedback, written.SessionFeedback), (read.MetricGap, scoring.MetricGap),
             (read.FeatureGap, scoring.FeatureGap), (read.Recommendation, scoring.Recommendation)]
    # Fields named apart from their key: the feedback's profile name is profile.profile; its suite the three blocks.
    renamed = {"profile_name": "profile", "suite": "identity"}
    for typed, shape in pairs:
        keys = set(typing.get_type_hints(shape))
        fields = {renamed.get(f.name, f.name) if typed is read.RoundFeedback else f.name
                  for f in dataclasses.fields(typed)} - {"written"}
        assert fields <= keys, (typed.__name__, sorted(fields - keys))
