"""API keys: read from the environment or ``.env`` only, never logged or saved.

``redact`` is the one scrubber: it removes every known key value from a text, and
``redact_value`` from every string inside JSON-like data. Model and server text is
scrubbed where it enters (``agent.llm.loop``, ``agent.llm.story``, ``tools.providers``) and
again where text leaves the process: the terminal (``agent.views.ui``), the log
(``install_log_redaction`` on the root logger, so a third-party library's debug
output cannot leak a key either), text and JSON files (``tools.atomic``) and PNG
text chunks (``tools.generation.png_metadata``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

KEY_NAMES = ("DEEPSEEK_API_KEY", "OPENAI_API_KEY", "FREEPIK_API_KEY", "DEEPAI_API_KEY", "GEMINI_API_KEY")
_loaded_dotenv: set[Path] = set()


def load_dotenv(path: str | os.PathLike = ".env") -> dict[str, str]:
    """Read ``KEY=VALUE`` lines into ``os.environ`` without overriding what is already set."""
    env_path = Path(path).resolve()
    found: dict[str, str] = {}
    if not env_path.is_file():
        return found
    for line in env_path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        key, value = key.strip(), _dotenv_value(value)
        found[key] = value
        os.environ.setdefault(key, value)
    _loaded_dotenv.add(env_path)
    return found


def _dotenv_value(raw: str) -> str:
    """``"a # b"`` and ``'a'`` keep what is inside the quotes; ``a  # note`` drops the comment, as python-dotenv does."""
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] in "'\"":
        closing = raw.find(raw[0], 1)
        if closing > 0:
            return raw[1:closing]
    for marker in (" #", "\t#"):
        if marker in raw:
            raw = raw[:raw.index(marker)]
    return raw.strip()


def api_key(name: str) -> str | None:
    """The key's value from the environment (after ``load_dotenv``), or None when unset/blank."""
    value = os.environ.get(name, "").strip()
    return value or None


def mask(value: str | None) -> str:
    """Show that a key is set without showing it: ``****wxyz`` (last 4 only for long keys)."""
    if not value:
        return "not set"
    return "****" + value[-4:] if len(value) >= 16 else "****"


def known_secret_values() -> list[str]:
    values = [os.environ.get(name, "") for name in KEY_NAMES]
    return sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def _secrets(extra: list[str | None] | None) -> list[str]:
    return known_secret_values() + [s for s in (extra or []) if s and len(s) >= 4]


def redact(text: str, extra: list[str | None] | None = None) -> str:
    """``text`` with every known key value (and each of ``extra``) replaced by ``***``."""
    for secret in _secrets(extra):
        text = text.replace(secret, "***")
    return text


class StreamRedactor:
    """``redact`` for text that arrives in pieces (a streamed answer shown as it comes): a tail that could be
    the start of a key is held back until the next piece shows whether it is one."""

    def __init__(self, extra: list[str | None] | None = None) -> None:
        self.extra = extra
        self.pending = ""

    def feed(self, piece: str) -> str:
        """What of the text so far can be shown now, scrubbed."""
        text = redact(self.pending + piece, self.extra)
        hold = max((n for secret in _secrets(self.extra) for n in range(1, len(secret))
                    if text.endswith(secret[:n])), default=0)
        self.pending = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold]

    def flush(self) -> str:
        """The held-back tail at the end of the stream (it never became a key)."""
        rest, self.pending = self.pending, ""
        return rest


def redact_value(value: Any, extra: list[str | None] | None = None) -> Any:
    """A copy of JSON-like ``value`` (dicts, lists, strings) with ``redact`` applied to every string in it."""
    if isinstance(value, dict):
        return {redact(str(k), extra): redact_value(v, extra) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v, extra) for v in value]
    if isinstance(value, str):
        return redact(value, extra)
    return value


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # A logged exception's text can hold a key too (an URL, a header echoed back): format it now,
        # scrubbed; formatters reuse ``exc_text`` instead of formatting the traceback again.
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(RedactingFilter())
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
