"""All terminal output goes through here (as aider's io.py): colours, tables, warnings, confirmations."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from tools.secrets import redact

console = Console(highlight=False, no_color=bool(os.environ.get("NO_COLOR")))
err_console = Console(stderr=True, highlight=False, no_color=bool(os.environ.get("NO_COLOR")))


def info(message: str) -> None:
    console.print(redact(message))


def success(message: str) -> None:
    console.print(f"[green]✓[/green] {redact(message)}")


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {redact(message)}")


def error(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {redact(message)}", soft_wrap=True)


def markdown(text: str) -> None:
    console.print(Markdown(redact(text)))


def table(title: str, columns: list[str], rows: list[list[object]], caption: str | None = None) -> None:
    grid = Table(title=title, caption=caption)
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*[_cell(v) for v in row])
    console.print(grid)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return redact(str(value))


def confirm(question: str, assume_yes: bool = False) -> bool:
    """Ask before paid or long work; ``--yes`` or a non-terminal stdin answers for the user."""
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        return False
    answer = console.input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")
