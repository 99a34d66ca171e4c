"""Errors that reach the user as one line on stderr, never as a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad environment: printed as ``error: <message>``.

    ``exit_code`` 2 is for bad command-line input (missing file, unreadable audio,
    audio too long); 1 is for a failure while doing the work (server down, engine
    failed to start).
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class AudioError(UserError):
    """An audio input could not be used. The message names the file."""


class EngineError(UserError):
    """The engine or server failed a request; ``retryable`` tells batch whether to retry."""

    exit_code = 1

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
