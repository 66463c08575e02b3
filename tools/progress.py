"""Rich progress bars for long work, silent in quiet mode or when output is not a terminal.

The bars draw on the console of whoever talks to the user (``agent.ui.UI.progress_bars`` sets it
with ``progress_on``). A context variable rather than a parameter: the capabilities stay free of
any terminal object in their signatures, and tools/ never imports agent/.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

Advance = Callable[..., None]
_console: ContextVar[Any] = ContextVar("aldar_progress_console", default=None)


@contextmanager
def progress_on(console: Any) -> Iterator[None]:
    """Draw the progress bars started inside this block on ``console`` (a rich ``Console``)."""
    token = _console.set(console)
    try:
        yield
    finally:
        _console.reset(token)


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False) -> Iterator[Advance]:
    """Yield ``advance(n=1, status="...")``; ``status`` is shown after the bar (e.g. loss, it/s)."""
    if quiet:
        yield lambda n=1, status="": None
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=_console.get(), transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str = "") -> None:
            progress.update(task, advance=n, status=status)

        yield advance
