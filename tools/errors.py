"""One small error hierarchy. Every error names the problem and the fix.

The CLI prints ``str(error)`` as a single line and exits with ``exit_code``;
no traceback reaches the user for anything raised from here.
"""

from __future__ import annotations


class AldarError(Exception):
    """Base class: ``problem`` says what went wrong, ``fix`` what to do about it."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split())
        super().__init__(self.problem)

    def __str__(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class InputError(AldarError):
    """A file, folder or value the user gave us is unusable."""


class ConfigError(AldarError):
    """``aldar.toml``, an environment variable or a flag holds a bad setting."""


class InsecureUrlError(ConfigError):
    """A base URL an API key would be sent to in clear text (or with credentials in it): never a fallback."""


class ResumeMismatchError(ConfigError):
    """A run folder's checkpoint was made with other settings or images, so it cannot be continued."""


class ModelNotFoundError(AldarError):
    """Model weights are neither cached, nor local, nor downloadable."""


class ProviderError(AldarError):
    """A hosted generator or the LLM endpoint refused or failed a request."""


class TrainingError(AldarError):
    """Training stopped: diverged, out of memory, or interrupted."""


class BusyError(AldarError):
    """Another process holds the results folder."""


class StorageError(AldarError, OSError):
    """A file or folder could not be written or read: no space, a file where a folder belongs, no permission.

    Also an ``OSError``, so best-effort writers that catch ``OSError`` (caches) keep going as before;
    ``errno`` is the original one. Built by ``tools.atomic.storage_error``.
    """

    def __init__(self, problem: str, fix: str = "", errno: int | None = None) -> None:
        super().__init__(problem, fix)
        self.errno = errno
