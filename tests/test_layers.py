"""The layering the architecture promises, checked on the source: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_tools_never_import_agent():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "tools").rglob("*.py")
                 if any(name == "agent" or name.startswith("agent.") for name in imported_modules(p))]
    assert offenders == []


def test_session_and_policy_do_not_import_each_other_or_the_terminal():
    rounds = ROOT / "agent" / "rounds"
    session, policy = imported_modules(rounds / "session.py"), imported_modules(rounds / "policy.py")
    assert not any(name.startswith("agent.rounds.policy") for name in session)
    assert not any(name.startswith("agent.rounds.session") for name in policy)
    for names in (session, policy):
        assert not any(name.startswith(("agent.views.ui", "rich")) or name == "agent.views.ui" for name in names)


def test_nothing_rewrites_annotations_at_run_time():
    offenders = [str(p.relative_to(ROOT)) for folder in ("agent", "tools") for p in (ROOT / folder).rglob("*.py")
                 if "__annotations__" in p.read_text(encoding="utf-8")]
    assert offenders == []
