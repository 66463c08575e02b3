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


def test_the_history_and_feedback_files_are_read_by_the_store_alone():
    """training_history.json and the rounds' feedback files are read in agent/rounds/store.py (the loader that
    checks every record and fills the header's defaults once, ``history_state``); elsewhere a record's round
    number is indexed, never guessed with ``.get``: the loader refused a history whose record has none."""
    readers, guessed = [], []
    for name, path in modules().items():
        if not name.startswith("agent.") or name == "agent.rounds.store":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in ("HISTORY_FILE", "round_feedback") and name != "agent.llm.decider":
                readers.append(f"{name}: {node.id}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "round"
                    and "feedback" not in ast.unparse(node.func.value)):
                guessed.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Constant) and node.value in ("training_history.json", "feedback_*.json"):
                readers.append(f"{name}: {node.value}")
    assert readers == [] and guessed == []
