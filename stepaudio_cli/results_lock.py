"""The lock that makes one run the only writer of a results file: an exclusive POSIX lock
(``lockf``) on the file itself, so that every name of it (hard links, symlinks) is one writer.

POSIX locks belong to the process and the file: the kernel drops them when the process dies
(kill -9 included), forked children never hold them, and closing *any* descriptor of the file
in the process drops them: ``store.Store`` keeps one descriptor of the file for the whole run,
and :data:`HELD` refuses a second store of the same file in one process before it opens it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time
from pathlib import Path

from stepaudio_cli.errors import ResultsBusyError, StoreError

HELD: set[tuple[int, int]] = set()  # results files this process holds locked: (st_dev, st_ino)


def ident(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def lock(target: Path, shown: Path) -> tuple[int, bool]:
    """A descriptor of the results file (created when missing), open to read and append, under
    an exclusive POSIX lock; and whether this call created the file. A name that moved on while
    it was being locked (another run's compaction renamed a new file over it) is locked again."""
    while True:
        try:
            known = os.stat(target)
        except FileNotFoundError:
            known = None
        if known is not None and ident(known) in HELD:  # before opening: a close would drop our lock
            raise ResultsBusyError(f"{shown}: this process is already writing to it")
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if known is None else 0)
        try:
            fd = os.open(target, flags, 0o644)
        except (FileExistsError, FileNotFoundError):
            continue  # created or removed meanwhile: look again
        except OSError as e:
            raise StoreError(f"{shown}: cannot open it for writing ({e.strerror or e})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise StoreError(f"{shown}: cannot lock it ({e.strerror or e})") from None
            raise ResultsBusyError(
                f"{shown}: another stepaudio batch is writing to it ({holder}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        info = os.fstat(fd)
        try:
            same = os.path.samestat(info, os.stat(target))
        except FileNotFoundError:
            same = False
        if same:
            HELD.add(ident(info))
            return fd, known is None
        os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock on ``fd``'s file: ``pid N started TIME`` (fcntl F_GETLK, /proc)."""
    layout = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        kind, _, _, _, pid = struct.unpack(layout, got[: struct.calcsize(layout)])
    except (OSError, struct.error):
        return "its process id is unknown"
    if kind == fcntl.F_UNLCK or pid <= 0:
        return "its process id is unknown"
    started = _started(pid)
    return f"pid {pid}" + (f" started {started}" if started else "")


def _started(pid: int) -> str | None:
    """When process ``pid`` started (Linux: /proc), as UTC."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        lines = Path("/proc/stat").read_text().splitlines()
        boot = next(float(ln.split()[1]) for ln in lines if ln.startswith("btime"))
        at = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
