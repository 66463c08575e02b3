"""``aldar doctor``: check Python, packages, device, models, references, taxonomy, keys and the output folder."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tools.doctor import FAIL, INFO, OK, WARN, CheckResult, exit_code, import_all, run_checks

if TYPE_CHECKING:
    from agent.ui import UI
    from tools.settings import Settings

NAME = "doctor"
HELP = ("check that this machine can run aldar with these settings: packages, device, model weights, "
        "references, taxonomy, API keys (masked), output folder; exits 1 when something required is missing")
_STATUS_STYLE = {OK: "[green]ok[/green]", INFO: "[blue]info[/blue]", WARN: "[yellow]warn[/yellow]",
                 FAIL: "[bold red]FAIL[/bold red]"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--references", metavar="DIR", help="reference pictures to check (default: the bundled ones)")
    parser.add_argument("--taxonomy", metavar="FILE", help="feature taxonomy to check")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from rich.markup import escape

    results = run_checks(settings, extra_checks=[check_agent])
    # Details hold paths and error texts: escape them so rich never reads "[...]" as markup.
    rows = [[escape(r.name), _STATUS_STYLE.get(r.status, r.status), escape(r.detail)] for r in results]
    ui.table(f"aldar doctor — profile {settings.profile}", ["check", "status", "detail"], rows)
    # Fixes go below the table as whole lines: a table column would cut model ids and commands short. What is
    # missing (fail, warn) comes under "how to fix", one line each, so the count in the last line is what it lists;
    # an info line's advice is not a missing item and comes apart.
    for heading, statuses in (("how to fix", (FAIL, WARN)), ("good to know", (INFO,))):
        lines = [r for status in statuses for r in results if r.status == status and r.fix]
        if lines:
            ui.info(f"[bold]{heading}[/bold]")
        for r in lines:
            ui.info(f"  {_STATUS_STYLE.get(r.status, r.status)} {escape(r.name)}: {escape(r.fix)}")
    failed = [r for r in results if r.status == FAIL]
    warnings = sum(r.status == WARN for r in results)
    if failed:
        ui.error(f"{len(failed)} required check(s) failed: {', '.join(r.name for r in failed)} — "
                 f"apply the fix on each FAIL line" + ("" if settings.is_tiny else ", or try --profile tiny"))
    else:
        ui.success(f"ready for profile {settings.profile}" + (f" ({warnings} optional item(s) missing)" if warnings else ""))
    return exit_code(results)


def check_agent(settings: Settings) -> list[CheckResult]:
    """The agent side of the project: its modules import and the prompt files the LLM reads are there."""
    from agent.prompts import PROMPTS_DIR

    imported, failures = import_all("agent")
    results = failures or [CheckResult("agent modules", OK, f"all {imported} import")]
    prompts = sorted(p.name for p in PROMPTS_DIR.glob("*.md")) if PROMPTS_DIR.is_dir() else []
    if prompts:
        results.append(CheckResult("prompt files", OK, f"{PROMPTS_DIR}: {', '.join(prompts)}"))
    else:
        results.append(CheckResult("prompt files", FAIL, f"no prompts/*.md in {PROMPTS_DIR}",
                                   "reinstall aldar, or in a checkout restore prompts/ (git checkout prompts)"))
    return results
