"""Stop what a process started when that process dies, however it dies (kill -9 included).

The parent runs ``python -m stepaudio_cli.watchdog`` with a pipe on its stdin and writes one
line per target: ``group PGID`` (a process group: a server and its workers) or ``pid PID``.
When the pipe reaches its end without ``release`` (the parent exited, crashed or was
killed: the kernel closes its end), every target gets SIGTERM, then SIGKILL after a grace
period. ``release`` means the parent stopped its targets itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

GRACE_S = 5.0  # then SIGKILL: the parent is gone, nobody waits for a tidy shutdown


class Watchdog:
    """The parent's handle: start one, name targets, release it on a clean exit."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stepaudio_cli.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a kill of the parent's process group or terminal
        )
        self._fd = self.proc.stdin.fileno()
        _OPEN_PIPES.add(self._fd)

    def watch_group(self, pgid: int) -> None:
        self._send(f"group {pgid}")

    def watch_pid(self, pid: int) -> None:
        self._send(f"pid {pid}")

    def release(self) -> None:
        """The targets were stopped by the parent: the watchdog exits without acting."""
        if self.proc.stdin.closed:
            return
        _OPEN_PIPES.discard(self._fd)
        with contextlib.suppress(OSError):
            self._send("release")
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def _send(self, line: str) -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()


#: Write ends of live watchdog pipes. A child forked without exec (vLLM may fork its engine
#: processes) must not keep one open, or its watchdog would never see the parent go.
_OPEN_PIPES: set[int] = set()


def _close_in_child() -> None:
    for fd in _OPEN_PIPES:
        with contextlib.suppress(OSError):
            os.close(fd)
    _OPEN_PIPES.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _signal_all(targets: set[tuple[str, int]], sig: int) -> bool:
    """Send ``sig``; True while any target still exists."""
    alive = False
    for kind, n in targets:
        try:
            (os.killpg if kind == "group" else os.kill)(n, sig)
            alive = True
        except (ProcessLookupError, PermissionError):
            pass
    return alive


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the parent
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    targets: set[tuple[str, int]] = set()
    for raw in sys.stdin.buffer:
        kind, _, number = raw.decode(errors="replace").strip().partition(" ")
        if kind == "release":
            return
        if kind in ("group", "pid") and number.isdigit():
            targets.add((kind, int(number)))
    if not _signal_all(targets, signal.SIGTERM):
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if not _signal_all(targets, 0):
            return
    _signal_all(targets, signal.SIGKILL)


if __name__ == "__main__":
    main()
