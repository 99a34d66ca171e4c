"""The batch result store: append-only JSONL or CSV, durable per record, resumable, one writer.

The contract that keeps a user's data safe:

- **Ours and whole before anything changes.** ``open`` takes the run's lock, then reads and
  parses the whole file (``store_format``): every line must be one of our records. A whole
  last record without its newline gets the newline; only a torn last line (a crash mid-write)
  of a file shown to be ours is cut off. Anything else (an audio file, notes, another tool's
  JSON, the other format) is refused with one line naming the file and what it is, and its
  bytes are left as they are.
- **One writer per file, whatever its name.** An exclusive POSIX lock (``lockf``) on the
  results file itself (its device and inode), held for the whole run through one descriptor
  that every read and write goes through (closing any other descriptor of the file would drop
  a POSIX lock), so hard links and symlinks to it are one writer. A second run gets
  ``ResultsBusyError`` (exit 73) naming the holder's pid and start time. The kernel drops the
  lock when the process dies, however it dies, and forked children (engine workers) never hold it.
- **Durable records.** Each record is one ``write`` of a complete line, fsynced before
  ``append`` returns: a crash loses at most the line being written.
- **Compaction** reads the file as it is on disk at that moment, writes the result to a temp
  file created exclusively (``mkstemp``) beside it, fsyncs it, locks it and renames it over the
  file: at every moment the file is the old whole or the new whole. A file with other hard
  links is left uncompacted (a rename would split its names).
- **Starting over** (``open(replace=True)``) copies the file to ``NAME.previous`` first and
  empties it in place; the copy goes when the run completes (``close(finished=True)``).
- **A symlinked path** is resolved once, when the store is made; every read and write goes to
  the target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from stepaudio_cli.errors import StoreError, UserError
from stepaudio_cli.records import CSV_FIELDS
from stepaudio_cli.results_lock import HELD, ident, lock
from stepaudio_cli.store_format import NotOurs, other_format, parse, serialize, sniff

FORMATS = ("jsonl", "csv")


def infer_format(output: str | None, fmt: str | None) -> str:
    """``--format`` when given, else CSV for an ``-o`` named ``*.csv``, else JSONL."""
    if fmt is not None:
        return fmt
    return "csv" if output and output.lower().endswith(".csv") else "jsonl"


class Store:
    """Where batch records go. ``path`` None means stdout (no resume, no compaction); so
    does a path that is not a regular file (``/dev/stdout``, a pipe)."""

    def __init__(self, path: Path | None, fmt: str = "jsonl", stdout=None) -> None:
        if fmt not in FORMATS:
            raise UserError(f"--format must be jsonl or csv, not {fmt!r}")
        self.path = path  # as the user named it: messages
        self.target = _resolve(path) if path is not None else None  # every read and write
        self.fmt = fmt
        self._stdout = stdout
        self._lock = threading.Lock()  # one writer of lines at a time
        self._sync_lock = threading.Lock()  # one fsync at a time
        self.written = 0  # records written by this run
        self._synced = 0  # lines known to be on disk
        self._fd: int | None = None  # the results file (locked), or the device named by -o
        self._locked: tuple[int, int] | None = None  # (st_dev, st_ino) of the file this run holds locked
        self._created = False  # this run made the file (removed again if nothing is written)
        self._columns: list[str] | None = None  # CSV: the file's layout, once it has a header
        self._end = 0  # size of the file up to its last complete record
        self._records: list[dict] | None = None  # what open() read
        #: Where ``open(replace=True)`` kept the file's earlier content until the run completes.
        self.previous: Path | None = None

    @property
    def resumable(self) -> bool:
        """A regular file (or one to be created): read back on resume, compacted at the end."""
        if self.target is None:
            return False
        try:
            return stat.S_ISREG(self.target.stat().st_mode)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    # --- opening: lock, read, check -----------------------------------------------------------
    def open(self, inputs: Sequence[Path] = (), replace: bool = False) -> list[dict]:
        """Lock the file for this run, read it and check that it is ours and whole (a torn last
        line is cut, a missing last newline added). Returns the records. Refuses a file that is
        one of ``inputs``. ``replace``: start over, keeping the earlier content beside it."""
        if self._records is not None:
            return self._records
        if not self.resumable:
            if self.target is not None and self.target.is_dir():
                raise UserError(f"{self.path}: is a directory; give a results file with -o")
            self._records = []
            return self._records
        self._refuse_inputs(inputs)
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot create its folder ({e.strerror or e})") from None
        self._fd, self._created = lock(self.target, self.path)
        self._locked = ident(os.fstat(self._fd))
        try:
            records = self._read_and_check()
            if replace:
                records = self._set_aside()
            self._remove_stale_temp_files()
        except BaseException:
            self.close()
            raise
        self._records = records
        return records

    def load(self) -> list[dict]:
        """The records in the file (opening it first if needed)."""
        return self.open()

    def _refuse_inputs(self, inputs: Sequence[Path]) -> None:
        try:
            mine = os.stat(self.target)
        except OSError:
            return  # not there yet: it cannot be an input
        for item in inputs:
            with contextlib.suppress(OSError):
                if os.path.samestat(mine, os.stat(item)):
                    raise UserError(
                        f"{self.path}: is one of the inputs ({item}); give the results another name with -o"
                    )

    def _read_and_check(self) -> list[dict]:
        try:
            data = _read_all(self._fd)
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror or e})") from None
        try:
            parsed = parse(self.fmt, data)
        except NotOurs as e:
            raise self._not_ours(data, e) from None
        try:
            if parsed.end < len(data):  # a torn last record (a crash mid-write): ours to cut
                os.ftruncate(self._fd, parsed.end)
                os.fsync(self._fd)
            elif parsed.add_newline:  # a whole last record without its newline: ours to end
                os.write(self._fd, b"\n")
                os.fsync(self._fd)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot mend its last line ({e.strerror or e})") from None
        self._end = os.fstat(self._fd).st_size
        self._columns = parsed.header
        return parsed.records

    def _not_ours(self, data: bytes, problem: NotOurs) -> UserError:
        kind = sniff(data)
        if kind:
            return UserError(
                f"{self.path}: is {kind}, not a stepaudio results file; it was left unchanged (give another -o)"
            )
        other = other_format(self.fmt, data)
        if other:
            return UserError(
                f"{self.path}: is a stepaudio {other.upper()} results file, not {self.fmt.upper()}: "
                f"give --format {other}; it was left unchanged"
            )
        return UserError(
            f"{self.path}:{problem.line}: {problem.reason}; not a stepaudio {self.fmt.upper()} results file? "
            "It was left unchanged"
        )

    def _set_aside(self) -> list[dict]:
        """``--replace``: the file's content goes to ``NAME.previous`` (kept until the run
        completes), then the file is emptied in place (its other names, its mode stay)."""
        previous = self.target.with_name(self.target.name + ".previous")
        try:
            info = os.lstat(previous)
        except FileNotFoundError:
            info = None
        if info is not None:  # an earlier --replace that did not complete kept it: it stays as it is
            try:
                if not stat.S_ISREG(info.st_mode):
                    raise NotOurs(1, "not a regular file")
                parse(self.fmt, previous.read_bytes())
            except (NotOurs, OSError):
                raise UserError(
                    f"{previous}: exists and is not earlier results kept by --replace; it was left unchanged "
                    "(move it away, then rerun)"
                ) from None
        elif not self._end:
            return []  # nothing to keep
        else:
            try:
                data = _read_all(self._fd)
                fd = os.open(previous, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.fchmod(fd, stat.S_IMODE(os.fstat(self._fd).st_mode))
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                _fsync_dir(previous.parent)
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.unlink(previous)
                raise StoreError(f"{self.path}: cannot keep a copy in {previous} ({e.strerror or e})") from None
        try:
            os.ftruncate(self._fd, 0)
            os.fsync(self._fd)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot empty it ({e.strerror or e}); {previous} holds it") from None
        self.previous = previous
        self._end = 0
        self._columns = None
        return []

    def _remove_stale_temp_files(self) -> None:
        """Temp files of a compaction that was killed (kill -9) before its rename: only this
        file's, named as ``_replace`` names them, and only while we hold the lock."""
        pattern = re.compile(re.escape(f".{self.target.name}.") + r"[a-z0-9_]{8}\.tmp")
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.target.parent):
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    # --- writing ----------------------------------------------------------------------
    def _line(self, record: dict) -> bytes:
        """One record as the file wants it: CSV rows in the file's own layout, after the header
        when the file has none yet."""
        if self.fmt == "jsonl":
            return serialize("jsonl", [record])
        return serialize("csv", [record], self._columns or CSV_FIELDS, header=self._columns is None)

    def append(self, record: dict) -> None:
        """Write one record durably: on disk when this returns (thread-safe).

        Group commit: records that finish together (a batch whose requests end on the same
        step) share one fsync instead of queueing for one each; each still returns only
        after an fsync that began after its line was written.

        A write that fails (disk full, file or folder removed) raises StoreError and leaves
        the file as it was before it: every record already there stays whole.
        """
        with self._lock:
            data = self._line(record)
            if self.target is None:
                self._stdout.write(data.decode())
                self._stdout.flush()
                self._columns = self._columns or CSV_FIELDS
                return
            try:
                self._write(data)
            except OSError as e:
                self._undo()
                raise self._error(e) from None
            self._columns = self._columns or CSV_FIELDS
            self.written += 1
            mine = self.written
        with self._sync_lock:
            if self._synced >= mine:  # an fsync that started after our write has finished
                return
            with self._lock:
                upto, fd = self.written, self._fd
            try:
                os.fsync(fd)
            except OSError as e:
                raise self._error(e) from None
            self._synced = upto

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            if self.resumable:  # library use: opened (locked, checked) on the first record
                self.open()
            else:  # a device or pipe named by -o (/dev/stdout, /dev/full)
                self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        info = os.fstat(self._fd)
        if self._locked and stat.S_ISREG(info.st_mode):
            if info.st_nlink == 0:
                raise FileNotFoundError(errno.ENOENT, "the file (or its folder) was removed during the run")
            try:
                same = os.path.samestat(info, os.stat(self.target))
            except OSError:
                same = False
            if not same:
                raise FileExistsError(errno.EEXIST, "it was replaced by another file during the run")
            os.lseek(self._fd, 0, os.SEEK_END)
        _write_all(self._fd, data)
        self._end += len(data)

    def _undo(self) -> None:
        """Cut a partly written record off (needs no free space)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.fstat(self._fd).st_mode):
                    os.ftruncate(self._fd, self._end)

    def _error(self, e: OSError) -> StoreError:
        kept = f"the {self.written} result(s) written before are safe; " if self.written else ""
        return StoreError(
            f"{self.path}: cannot write the results ({e.strerror or e}); the run stopped: "
            f"{kept}fix it and rerun the same command to continue"
        )

    def rewrite(self, select: Callable[[list[dict]], list[dict]]) -> bool:
        """Compaction: replace the file, atomically, with ``select(records)`` of the records
        on disk now. False (and the file as it is) when there is nothing to compact, or the
        file is no longer the one this run checked and wrote (or has other hard links);
        StoreError when writing fails (the file is left as it was)."""
        if not self._locked:
            return False
        with self._lock:
            try:
                info = os.fstat(self._fd)
                if info.st_nlink == 0 or not os.path.samestat(info, os.stat(self.target)):
                    return False  # removed or replaced by someone else: not ours to overwrite
                data = _read_all(self._fd)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise self._error(e) from None
            try:
                parsed = parse(self.fmt, data)
            except NotOurs:
                return False  # changed by someone else: every record we wrote is there, uncompacted
            if parsed.end != len(data) or parsed.add_newline:
                return False
            chosen = select(parsed.records)
            if info.st_nlink > 1:  # a rename would leave its other names on the old content: two files
                return False  # left uncompacted: every record is there, and resume reads them all
            new = serialize(self.fmt, chosen, CSV_FIELDS, header=True) if chosen or data else b""
            if new != data:
                self._replace(new, stat.S_IMODE(info.st_mode))
            return True

    def _replace(self, data: bytes, mode: int) -> None:
        """``data`` in place of the file, through a locked temp file renamed over it; this
        run's descriptor (and lock) moves to the new file."""
        target = self.target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(tmp, target)
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error(e) from None
        old, self._fd = self._fd, fd
        HELD.discard(self._locked)
        self._locked = ident(os.fstat(fd))
        HELD.add(self._locked)
        os.close(old)  # the old file's lock goes with it; a run that opened it sees the name moved on
        self._end = len(data)
        self._columns = CSV_FIELDS if self.fmt == "csv" and data else None
        try:
            _fsync_dir(target.parent)
        except OSError as e:
            raise self._error(e) from None

    def close(self, finished: bool = False) -> None:
        """Close the file and give the run's lock back; a file this run created and left empty
        goes. ``finished`` (every input has its record): the copy ``replace`` kept goes too."""
        if self._fd is not None:
            if self._locked:
                HELD.discard(self._locked)
                with contextlib.suppress(OSError):
                    info = os.fstat(self._fd)
                    if self._created and info.st_size == 0 and os.path.samestat(info, os.stat(self.target)):
                        os.unlink(self.target)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._locked = None
        if finished and self.previous is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.previous)
            self.previous = None


def _resolve(path: Path) -> Path:
    """Where the records go: a symlink's target, once (a regular file, or one to be created);
    a device or pipe (``/dev/stdout``, ``/dev/full``) as named."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = True  # not there yet (or a dangling link: its target is created)
    return Path(os.path.realpath(path)) if regular else path


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts, pos = [], 0
    while True:
        block = os.pread(fd, max(size - pos, 1 << 16), pos)
        if not block:
            return b"".join(parts)
        parts.append(block)
        pos += len(block)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
