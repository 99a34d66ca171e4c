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
    """The engine or server failed a request; ``retryable`` tells batch whether to retry,
    ``server_down`` that the server itself is unreachable, hung or gone (not the request's
    fault): a pool of servers sends the request elsewhere. ``attempts``: how many times the
    request was sent before this error (a pool may send it more than once)."""

    exit_code = 1

    def __init__(self, message: str, *, retryable: bool = False, server_down: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable or server_down
        self.server_down = server_down
        self.attempts = 1


class NoServerError(EngineError):
    """No server answered for as long as we were told to wait: the run stops, and what was
    not attempted is left for a rerun. Exit code 75 (EX_TEMPFAIL: try again later)."""

    exit_code = 75


class StoreError(UserError):
    """The results file cannot be written (disk full, file or folder removed): the run
    stops; what was written before stays valid."""

    exit_code = 1


class ResultsBusyError(UserError):
    """Another run holds the results file's lock: nothing was read or changed. Exit code 73
    (EX_CANTCREAT: the output cannot be used now)."""

    exit_code = 73
