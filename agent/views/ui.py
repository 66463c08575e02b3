"""The one object that talks to the user (as aider's io.py): output, confirmations, progress bars.

A ``UI`` is made once per command (``agent.cli.main``) and handed to whoever talks to the user: the
commands, the REPL and the chat's tools (its ``confirm``). The yes/no policy (``--yes``, or a
non-terminal stdin answering no) and quiet mode live here, not threaded through the session.
Modules that decide (``agent.rounds.session``, the policies) never print: they emit events that a ``UI``
renders (``session_events``). Tables of scores and parameters are built by ``agent.views.render``.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator

from rich.console import Console
from rich.markdown import Markdown
from rich.markup import escape
from rich.table import Table

from agent.rounds.documents import Round, RoundFeedback
from agent.views.render import Table as ScoreTable
from agent.views.render import decision_lines, feedback_lines, history_table, number
from tools.progress import progress_on
from tools.scoring.records import Feedback
from tools.secrets import redact

if TYPE_CHECKING:
    from rich.live import Live

    from agent.rounds.session import Session, SessionEvents


class UI:
    def __init__(self, *, assume_yes: bool = False, quiet: bool = False, console: Console | None = None,
                 err_console: Console | None = None) -> None:
        no_color = bool(os.environ.get("NO_COLOR"))
        self.console = console or Console(highlight=False, no_color=no_color)
        self.err_console = err_console or Console(stderr=True, highlight=False, no_color=no_color)
        self.assume_yes = assume_yes
        self.quiet = quiet
        self._said_once: set[str] = set()

    # ---------------------------------------------------------------- output
    def info(self, message: str) -> None:
        self.console.print(redact(message))

    def status(self, message: str) -> None:
        """Progress talk (plain text, not markup); silent in quiet mode."""
        if not self.quiet:
            self.info(escape(message))

    def success(self, message: str) -> None:
        # soft_wrap: the terminal wraps a long line, rich breaks nothing, so a path in it copies whole
        self.console.print(f"[green]✓[/green] {redact(message)}", soft_wrap=True)

    def paths(self, rows: list[tuple[str, object]]) -> None:
        """Files as ``label: path`` lines, never cut or broken by rich (see ``success``); None shows as "—"."""
        for label, path in rows:
            self.console.print(escape(f"{label}: {redact(str(path)) if path else '—'}"), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.err_console.print(f"[yellow]warning:[/yellow] {redact(message)}")

    def warn_once(self, message: str) -> None:
        """A warning that would repeat every round (a missing key): shown the first time only."""
        if message not in self._said_once:
            self._said_once.add(message)
            self.warn(escape(message))

    def error(self, message: str) -> None:
        self.err_console.print(f"[bold red]error:[/bold red] {redact(message)}", soft_wrap=True)

    def write(self, text: str) -> None:
        """``text`` as it is (no markup), without a line end: a prompt before the user types."""
        self.console.print(escape(text), end="")

    @property
    def is_terminal(self) -> bool:
        return self.console.is_terminal

    def live_markdown(self) -> Live:
        """A live view of Markdown on this console, started by the caller (``StreamRenderer``)."""
        from rich.live import Live

        return Live(Markdown(""), console=self.console, refresh_per_second=8, transient=False)

    def markdown(self, text: str) -> None:
        self.console.print(Markdown(redact(text)))

    def table(self, title: str, columns: list[str], rows: list[list[object]], caption: str | None = None) -> None:
        grid = Table(title=title, caption=caption, caption_justify="left")  # a caption of sentences reads left
        for column in columns:
            grid.add_column(column, overflow="fold")  # a long value (a path) breaks onto the next line, never "…"
        for row in rows:
            grid.add_row(*[_cell(v) for v in row])
        self.console.print(grid)

    def show(self, table: ScoreTable) -> None:
        """A table of ``agent.views.render`` (scores, history, analysis): ceiling row in italics, notes as warnings."""
        rows = [[escape(cell) for cell in row] for row in table.rows]
        if table.ceiling:
            rows.append([f"[italic]{escape(cell)}[/italic]" for cell in table.ceiling])
        self.table(table.title, table.columns, rows, caption=escape(table.caption) if table.caption else None)
        for note in table.notes:
            self.warn(escape(note))

    def show_history(self, history: list[Round]) -> None:
        self.show(history_table(history))
        for line in decision_lines(history, self.console.width - 1):  # -1: a full-width line wraps in some terminals
            self.info(escape(line))

    def show_feedback(self, feedback: RoundFeedback | Feedback) -> None:
        for style, text in feedback_lines(feedback):
            self.info(f"  [{style}]{escape(text)}[/]" if style else escape(text))

    # ---------------------------------------------------------------- input
    @property
    def can_ask(self) -> bool:
        """Whether ``confirm`` can put a question to a person (a terminal on stdin)."""
        return sys.stdin.isatty()

    def confirm(self, question: str) -> bool:
        """Ask before paid or long work; ``--yes`` answers yes, a non-terminal stdin answers no.

        Enter alone takes the default (no); an answer that is neither yes nor no asks again, so a
        typo ("yse", "maybe") never silently cancels the work. End of input (Ctrl-D) means no.
        """
        if self.assume_yes:
            return True
        if not self.can_ask:
            return False
        # rich would read "[y/N]" as a markup tag and print nothing: escape the whole prompt.
        prompt = escape(f"{redact(question)} [y/N] ")
        while True:
            try:
                answer = self.console.input(prompt).strip().lower()
            except EOFError:
                return False
            if answer in ("", "n", "no"):
                return False
            if answer in ("y", "yes"):
                return True
            self.console.print(escape(f"please answer y or n (got {answer!r})"))

    # ---------------------------------------------------------------- wiring
    @contextmanager
    def progress_bars(self) -> Iterator[None]:
        """Progress bars of the capabilities (training, generation, scoring) draw on this console."""
        with progress_on(self.console):
            yield

    def session_events(self, on_round_recorded: Callable[[Session], None] | None = None) -> SessionEvents:
        """How this UI shows what a ``Session`` reports; ``on_round_recorded`` writes the report (``ReportWriter``)."""
        from agent.rounds.session import SessionEvents

        return SessionEvents(on_status=self.status, on_notice=lambda message: self.info(escape(message)),
                             on_warning=lambda message: self.warn(escape(message)), on_missing_key=self.warn_once,
                             on_round_recorded=on_round_recorded)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return number(value)
    return redact(str(value))
