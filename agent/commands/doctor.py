"""``aldar doctor``: check Python, packages, device, models, references, taxonomy, keys and the output folder."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tools.doctor import FAIL, INFO, OK, WARN, CheckResult, exit_code, import_all, run_checks

if TYPE_CHECKING:
    from agent.views.ui import UI
    from tools.settings import Settings

NAME = "doctor"
HELP = ("check that this machine can run aldar with these settings: packages, device, model weights, "
        "references, taxonomy, the LLM back-end (a local server is asked whether it answers and takes tools), "
        "API keys (masked), output folder; exits 1 when something required is missing")
# A local server answers in a second or two; one that takes longer is as good as not answering for a check.
PROBE_TIMEOUT_S = 30.0
_STATUS_STYLE = {OK: "[green]ok[/green]", INFO: "[blue]info[/blue]", WARN: "[yellow]warn[/yellow]",
                 FAIL: "[bold red]FAIL[/bold red]"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--references", metavar="DIR", help="reference pictures to check (default: the bundled ones)")
    parser.add_argument("--taxonomy", metavar="FILE", help="feature taxonomy to check")


def run(args: argparse.Namespace, settings: Settings, ui: UI) -> int:
    from rich.markup import escape

    results = run_checks(settings, extra_checks=[check_agent, check_llm])
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
    from agent.llm.prompts import PROMPTS_DIR

    imported, failures = import_all("agent")
    results = failures or [CheckResult("agent modules", OK, f"all {imported} import")]
    prompts = sorted(p.name for p in PROMPTS_DIR.glob("*.md")) if PROMPTS_DIR.is_dir() else []
    if prompts:
        results.append(CheckResult("prompt files", OK, f"{PROMPTS_DIR}: {', '.join(prompts)}"))
    else:
        results.append(CheckResult("prompt files", FAIL, f"no prompts/*.md in {PROMPTS_DIR}",
                                   "reinstall aldar, or in a checkout restore prompts/ (git checkout prompts)"))
    return results


def check_llm(settings: Settings) -> list[CheckResult]:
    """The LLM back-end: URL and model; a server on this machine is asked whether it answers and takes tools.

    A hosted endpoint is not called (doctor spends no tokens and touches no network); a local one costs a
    one-token-ish completion. Without an LLM the rule policy decides, so nothing here is a FAIL.
    """
    from agent.llm.client import KEY_HELP, resolve_endpoint
    from tools.errors import ConfigError
    from tools.urls import url_is_loopback

    try:
        env_name, _, base_url, model = resolve_endpoint(settings)
    except ConfigError:
        return [CheckResult("LLM back-end", INFO, "none configured: the rule policy decides each round", KEY_HELP)]
    backend = f"{model} at {base_url}"
    if not url_is_loopback(base_url):
        return [CheckResult("LLM back-end", OK, f"{backend} ({env_name}; hosted, not called by doctor)")]
    return [CheckResult("LLM back-end", OK, f"{backend} (local server{', ' + env_name if env_name else ', no key'})"),
            *probe_local_server(settings, base_url, model)]


def probe_local_server(settings: Settings, base_url: str, model: str) -> list[CheckResult]:
    """Does the local server answer (its model list), and does it take a request with tools?"""
    import openai

    from agent.llm.client import ToolsUnsupportedError, make_client, provider_error

    client, _ = make_client(settings.replace(llm_timeout_s=min(settings.llm_timeout_s, PROBE_TIMEOUT_S)))
    client = client.with_options(max_retries=0)
    try:
        served = [entry.id for entry in client.models.list()]
    except openai.APIStatusError:  # some servers have no /models: the chat request below tells
        served = []
    except (openai.OpenAIError, OSError):
        # The fix line under the table is the one a user reads: it names the server as well.
        return [CheckResult("LLM server", WARN, f"{base_url} not answering",
                            f"LLM server {base_url} not answering — start it or unset llm_base_url")]
    answering = CheckResult("LLM server", OK, f"answering; serves {', '.join(served[:4]) or 'an unnamed model'}")
    if served and model not in served:  # llama.cpp answers any name; Ollama and LM Studio need the served one
        answering = CheckResult("LLM server", INFO, f"answering; serves {', '.join(served[:4])}, not {model}",
                                f"pass --llm-model {served[0]} (or llm_model in aldar.toml) unless the server "
                                "answers any name, as llama.cpp does")
    ping = {"type": "function", "function": {"name": "ping", "description": "Answer that the server is up.",
                                             "parameters": {"type": "object", "properties": {}}}}
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Call ping."}],
                                       tools=[ping], max_tokens=16, temperature=0)
    except openai.OpenAIError as exc:
        error = provider_error(exc, settings.llm_timeout_s)
        if isinstance(error, ToolsUnsupportedError):
            return [answering, CheckResult("LLM tools", WARN, f"the server does not take tools ({error.problem})",
                                           error.fix)]
        return [answering, CheckResult("LLM tools", WARN, f"a request with tools failed: {error.problem}",
                                       error.fix or "check the server's log")]
    return [answering, CheckResult("LLM tools", OK, "takes a request with tools")]
