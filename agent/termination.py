"""SIGTERM and SIGHUP stop aldar as Ctrl-C does.

systemd, ``docker stop``, CI timeouts and job schedulers send SIGTERM; closing a terminal sends SIGHUP.
Python turns only SIGINT into ``KeyboardInterrupt``, so without this a SIGTERM killed the process at once
and the steps since the last periodic checkpoint were lost. Routed into ``KeyboardInterrupt``, they take
Ctrl-C's one path: the trainer checkpoints the step it reached, the round stays unfinished, the CLI says
so and exits 128 + the signal's number (143, 129), as a shell reports a process killed by it.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)

_received: list[int] = []  # the signals that arrived while ``interrupt_on_termination`` was active


def _interrupt(signum: int, frame) -> None:
    first = not _received
    _received.append(signum)
    # A second SIGTERM (a supervisor repeating itself) must not cut the checkpoint of the first one short;
    # SIGKILL remains for a process that should die at once.
    if first:
        raise KeyboardInterrupt


@contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """While active, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread (once)."""
    _received.clear()
    previous = {sig: signal.signal(sig, _interrupt) for sig in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def terminated_by() -> int | None:
    """The first SIGTERM/SIGHUP received, or None (also after a plain Ctrl-C)."""
    return _received[0] if _received else None


def interrupted_exit_code() -> int:
    """What a shell reports for a process stopped by the signal: 143 for SIGTERM, 129 for SIGHUP, 130 for Ctrl-C."""
    return 128 + (terminated_by() or signal.SIGINT)
