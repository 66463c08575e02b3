"""Rich progress bars for long work, silent in quiet mode or when output is not a terminal."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

Advance = Callable[..., None]


@contextmanager
def progress_bar(description: str, total: int, quiet: bool = False) -> Iterator[Advance]:
    """Yield ``advance(n=1, status="...")``; ``status`` is shown after the bar (e.g. loss, it/s)."""
    if quiet:
        yield lambda n=1, status="": None
        return
    columns = [SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str = "") -> None:
            progress.update(task, advance=n, status=status)

        yield advance
