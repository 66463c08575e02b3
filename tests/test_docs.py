"""README's "Development" layout names every module and package that exists (and only those)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"## Development\n\n```\n(.*?)```", text, re.S).group(1)


def test_readme_layout_names_every_module_and_package():
    block = layout_block()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", block))
    agent_packages = {p.name for p in (ROOT / "agent").iterdir() if (p / "__init__.py").is_file()}
    agent_modules = {p.stem for p in (ROOT / "agent").rglob("*.py")
                     if p.stem != "__init__" and p.parent.name != "commands"}
    tools_packages = {p.name for p in (ROOT / "tools").iterdir() if (p / "__init__.py").is_file()}
    tools_modules = {p.stem for p in (ROOT / "tools").glob("*.py") if p.stem != "__init__"}
    package_modules = {p.stem for package in tools_packages for p in (ROOT / "tools" / package).glob("*.py")
                       if p.stem != "__init__" and package != "providers"}
    assert agent_modules - words == set()
    assert {f"{name}/" for name in tools_packages} - set(re.findall(r"\b(\w+/)", block)) == set()
    assert tools_modules - words == set() and package_modules - words == set()
    assert {f"{name}/" for name in agent_packages} - set(re.findall(r"\b(\w+/)", block)) == set()
    named_packages = set(re.findall(r"^  (\w+)/", block, re.M))
    assert named_packages <= tools_packages | agent_packages  # no package in the README that the tree lacks


def test_readme_install_lines_name_the_wheel_that_pyproject_builds():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    built = f"{project['name'].replace('-', '_')}-{project['version']}-py3-none-any.whl"
    named = re.findall(r"aldar_lora-\S+?\.whl", (ROOT / "README.md").read_text(encoding="utf-8"))
    assert named and set(named) == {built}
    assert f"pipx install --preinstall torch==2.13.0 dist/{built}" in (ROOT / "README.md").read_text(encoding="utf-8")
