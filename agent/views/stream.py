"""The chat's answer on the terminal as it streams in, and its tool calls as dim lines."""

from __future__ import annotations

import json

from rich.live import Live
from rich.markdown import Markdown
from rich.markup import escape

from agent.llm.loop import ToolCallRecord
from agent.views.ui import UI
from tools.secrets import redact


class StreamRenderer:
    """Shows the model's answer as Markdown while it streams in (rich Live on a terminal; printed once
    complete otherwise), and tool calls as dim lines."""

    def __init__(self, ui: UI) -> None:
        self.ui = ui
        self.text = ""
        self.streamed_text = False
        self.live: Live | None = None
        self.animate = ui.is_terminal

    def feed(self, piece: str) -> None:
        self.text += piece
        self.streamed_text = True
        if not self.animate:
            return
        if self.live is None:
            self.live = self.ui.live_markdown()
            self.live.start()
        self.live.update(Markdown(redact(self.text)))

    def pause(self) -> None:
        """End the current block of text (before a tool call, or at the end of the turn)."""
        if self.live is not None:
            self.live.stop()
            self.live = None
        elif self.text.strip():
            self.ui.markdown(self.text)
        self.text = ""

    def tool_start(self, name: str, arguments: str) -> None:
        self.pause()
        shown = " ".join(arguments.split())
        shown = shown if len(shown) <= 100 else shown[:97] + "..."
        self.ui.info(f"[dim]→ {escape(name)}({escape(shown)})[/dim]")

    def tool_end(self, record: ToolCallRecord) -> None:
        if record.ok:
            self.ui.info(f"[dim]  ✓ {escape(record.name)}[/dim]")
        else:
            try:
                reason = json.loads(record.result).get("error", "")
            except (ValueError, AttributeError):
                reason = record.result
            self.ui.info(f"[dim]  ✗ {escape(record.name)}: {escape(str(reason)[:160])}[/dim]")

    def finish(self) -> None:
        self.pause()
