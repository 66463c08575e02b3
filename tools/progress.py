"""Rich progress bars for long work, silent in quiet mode or when output is not a terminal.

The bars draw on the console of whoever talks to the user (``agent.views.ui.UI.progress_bars`` sets it
with ``progress_on``). A context variable rather than a parameter: the capabilities stay free of
any terminal object in their signatures, and tools/ never imports agent/.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, Task,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Column
from rich.text import Text

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


class DescriptionColumn(ProgressColumn):
    """The task's description in bold, on one line, ending in "…" where the terminal is too narrow for it."""

    def __init__(self) -> None:
        super().__init__(table_column=Column(no_wrap=False))  # may narrow; the Text below keeps it on one line

    def render(self, task: Task) -> Text:
        return Text(task.description, style="bold", no_wrap=True, overflow="ellipsis")


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False) -> Iterator[Advance]:
    """Yield ``advance(n=1, status="...")``; ``status`` is shown after the bar (e.g. loss, it/s)."""
    if quiet:
        yield lambda n=1, status="": None
        return
    # In a narrow terminal the description and the bar give way (rich narrows the columns that may wrap, widest
    # first); the counts, times and status never do: rich cut them evenly, "200/2… 0:00:…" at 80 columns.
    whole = Column(no_wrap=True)
    columns = [SpinnerColumn(table_column=whole), DescriptionColumn(), BarColumn(bar_width=None),
               MofNCompleteColumn(table_column=whole), TimeElapsedColumn(table_column=whole),
               TextColumn("eta", table_column=whole), TimeRemainingColumn(table_column=whole),
               TextColumn("{task.fields[status]}", table_column=whole)]
    with Progress(*columns, console=_console.get(), transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str = "") -> None:
            progress.update(task, advance=n, status=status)

        yield advance
