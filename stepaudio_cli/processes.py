"""Processes on this machine, read from /proc (Linux) in one place: who a pid is, whether it is a
process we started, the processes under it.

A process is ours only when all of these hold: a positive pid other than 1, owned by this user,
started at the recorded time (a reused pid has another start time), and carrying a marker we set
(an environment variable we gave it, or its command line). Nothing is ever signalled on less.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_ENVIRON_MAX = 1 << 20  # bytes of /proc/PID/environ read at most


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    start: str  # clock ticks since boot, as /proc/PID/stat says: with the pid, one process ever
    uid: int


def info(pid: object) -> ProcInfo | None:
    """What /proc says of ``pid``; None when there is no such live process (gone, a zombie, or not
    a pid at all)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        uid = (_PROC / str(pid)).stat().st_uid
    except (OSError, IndexError):
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X") or not fields[1].isdigit():
        return None
    return ProcInfo(pid=pid, ppid=int(fields[1]), start=fields[19], uid=uid)


def start_time(pid: object) -> str | None:
    found = info(pid)
    return found.start if found else None


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment process ``pid`` was started with."""
    try:
        with open(_PROC / str(pid) / "environ", "rb") as f:
            data = f.read(_ENVIRON_MAX)
    except OSError:
        return None
    prefix = name.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def command_line(pid: int) -> list[str]:
    try:
        data = (_PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in data.split(b"\0") if a]


def is_ours(pid: object, started: object, marked: Callable[[int], bool]) -> bool:
    """True only for a live process with this ``pid`` (positive, not init, not this process), of
    this user, started at ``started``, for which ``marked(pid)`` finds the marker we set."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1 or pid == os.getpid():
        return False
    found = info(pid)
    if found is None or found.uid != os.getuid() or not isinstance(started, str) or found.start != started:
        return False
    return marked(pid)


def has_env(name: str, value: str) -> Callable[[int], bool]:
    """A marker: the process was started with ``name`` = ``value`` in its environment."""
    return lambda pid: environ_value(pid, name) == value


def runs_stepaudio(command: str) -> Callable[[int], bool]:
    """A marker: the process is ``stepaudio COMMAND`` (the console script or ``-m stepaudio_cli``)."""

    def marked(pid: int) -> bool:
        argv = command_line(pid)
        words = {os.path.basename(a) for a in argv[:3]}
        return command in argv and bool(words & {"stepaudio", "stepaudio_cli"})

    return marked


def terminate(pid: int) -> None:
    """SIGTERM ``pid``; the caller has proven it ours (:func:`is_ours`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)


def tree(pid: int) -> set[int]:
    """``pid`` and every process under it, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            found = info(int(entry.name))
            if found:
                children.setdefault(found.ppid, []).append(found.pid)
    seen, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += children.get(p, [])
    return seen


def left_behind(name: str, value: str, since: str) -> list[int]:
    """Live processes of this user started with ``name`` = ``value`` (a marker unique to one start
    of ours) no earlier than ``since`` (that start's time): what a process we started left running
    after its parent was killed."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        proc = info(int(entry.name))
        if (
            proc
            and proc.pid not in (1, os.getpid())
            and proc.uid == os.getuid()
            and since.isdigit()
            and int(proc.start) >= int(since)
            and environ_value(proc.pid, name) == value
        ):
            found.append(proc.pid)
    return found
