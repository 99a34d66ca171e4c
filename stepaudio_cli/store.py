"""The batch result store: append-only JSONL or CSV, durable per record, resumable, one writer.

The contract that keeps a user's data safe:

- **Ours and whole before anything changes.** ``open`` takes the run's lock, then reads and
  parses the whole file: every line must be one of our records (``records.check_record``).
  Only a torn last line (a crash mid-write) of a file that is otherwise all records is cut
  off. Anything else (an audio file, notes, the other format) is refused with one line naming
  the file and what it is, and its bytes are left as they are.
- **One writer.** An exclusive POSIX lock (``lockf``) on ``.NAME.lock`` beside the file, held
  for the whole run, through compaction; the file holds the holder's pid and start time for
  the message a second run gets (``ResultsBusyError``, exit 73). The kernel drops the lock when
  the process dies, however it dies, and forked children (engine workers) never hold it.
- **Durable records.** Each record is one ``write`` of a complete line, fsynced before
  ``append`` returns: a crash loses at most the line being written.
- **Compaction** reads the file as it is on disk at that moment, writes the result to a temp
  file created exclusively (``mkstemp``) beside it, fsyncs it and renames it over the file: at
  every moment the file is the old whole or the new whole.
- **A symlinked path** is resolved once, when the store is made; every read and write goes to
  the target.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from stepaudio_cli.errors import ResultsBusyError, StoreError, UserError
from stepaudio_cli.records import CSV_FIELDS, check_record, from_csv_row, to_csv_row

_JSONL_START = b'{"file": '  # how every JSONL record we write begins
_CSV_HEADER = (",".join(CSV_FIELDS) + "\n").encode()
_LOCK_TEXT = re.compile(rb"\A(pid \d+ started [^\n]*\n)?\Z")
_HELD: set[str] = set()  # lock files this process holds (closing a second descriptor would drop a POSIX lock)


class Store:
    """Where batch records go. ``path`` None means stdout (no resume, no compaction); so
    does a path that is not a regular file (``/dev/stdout``, a pipe)."""

    def __init__(self, path: Path | None, fmt: str = "jsonl", stdout=None) -> None:
        if fmt not in ("jsonl", "csv"):
            raise UserError(f"--format must be jsonl or csv, not {fmt!r}")
        self.path = path  # as the user named it: messages
        self.target = _resolve(path) if path is not None else None  # every read and write
        self.fmt = fmt
        self._stdout = stdout
        self._lock = threading.Lock()  # one writer of lines at a time
        self._sync_lock = threading.Lock()  # one fsync at a time
        self.written = 0  # records written by this run
        self._synced = 0  # lines known to be on disk
        self._fd: int | None = None
        self._wrote_header = False
        self._end = 0  # size of the file up to its last complete record
        self._records: list[dict] | None = None  # what open() read
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the file read or written
        self._run_lock: _RunLock | None = None

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
    def open(self, inputs: Sequence[Path] = ()) -> list[dict]:
        """Lock the file for this run, read it and check that it is ours and whole; cut a
        torn last line off. Returns the records. Refuses a file that is one of ``inputs``."""
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
        self._run_lock = _RunLock(self.target, self.path)
        self._run_lock.acquire()
        try:
            self._records = self._read_and_check()
            self._remove_stale_temp_files()
        except BaseException:
            self.close()
            raise
        return self._records

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
            with open(self.target, "rb") as f:
                info = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror or e})") from None
        records, end = self._parse(data)
        if end != len(data):  # a torn last record (a crash mid-write): ours to cut
            try:
                with open(self.target, "r+b") as f:
                    if not os.path.samestat(os.fstat(f.fileno()), info) or os.fstat(f.fileno()).st_size != len(data):
                        raise UserError(f"{self.path}: changed while it was being read; rerun")
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise StoreError(f"{self.path}: cannot cut its torn last line ({e.strerror or e})") from None
        self._ident = (info.st_dev, info.st_ino)
        self._wrote_header = self.fmt == "csv" and end > 0
        return records

    def _remove_stale_temp_files(self) -> None:
        """Temp files of a compaction that was killed (kill -9) before its rename: only this
        file's, named as ``_replace`` names them, and only while we hold the lock."""
        pattern = re.compile(re.escape(f".{self.target.name}.") + r"[a-z0-9_]{8}\.tmp")
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.target.parent):
                if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def _parse(self, data: bytes) -> tuple[list[dict], int]:
        """Records, and the length up to the end of the last whole one; UserError naming the
        file and what it is when it is not ours."""
        parsers = {"jsonl": _parse_jsonl, "csv": _parse_csv}
        try:
            return parsers[self.fmt](data)
        except _NotOurs as e:
            problem = e
        kind = _sniff(data)
        if kind:
            raise UserError(
                f"{self.path}: is {kind}, not a stepaudio results file; it was left unchanged (give another -o)"
            )
        other = "csv" if self.fmt == "jsonl" else "jsonl"
        with contextlib.suppress(_NotOurs):
            parsers[other](data)
            raise UserError(
                f"{self.path}: is a stepaudio {other.upper()} results file, not {self.fmt.upper()}: "
                f"give --format {other}; it was left unchanged"
            )
        raise UserError(
            f"{self.path}:{problem.line}: {problem.reason}; not a stepaudio {self.fmt.upper()} results file? "
            "It was left unchanged"
        )

    # --- writing ----------------------------------------------------------------------
    def _serialize(self, records: Iterable[dict], header: bool) -> bytes:
        if self.fmt == "jsonl":
            return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        if header:
            writer.writeheader()
        for r in records:
            writer.writerow(to_csv_row(r))
        return buf.getvalue().encode()

    def append(self, record: dict) -> None:
        """Write one record durably: on disk when this returns (thread-safe).

        Group commit: records that finish together (a batch whose requests end on the same
        step) share one fsync instead of queueing for one each; each still returns only
        after an fsync that began after its line was written.

        A write that fails (disk full, file or folder removed) raises StoreError and leaves
        the file as it was before it: every record already there stays whole.
        """
        with self._lock:
            data = self._serialize([record], header=not self._wrote_header)
            if self.target is None:
                self._stdout.write(data.decode())
                self._stdout.flush()
                self._wrote_header = True
                return
            try:
                self._write(data)
            except OSError as e:
                self._undo()
                raise self._error(e) from None
            self._wrote_header = True
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
            self._fd = self._open_for_append()
            self._end = os.fstat(self._fd).st_size
        info = os.fstat(self._fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0:
            raise FileNotFoundError(2, "the file (or its folder) was removed during the run")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._end += len(data)

    def _open_for_append(self) -> int:
        """The file read at the start (or a new one where there was none): never another."""
        if self._records is None or not self.resumable:  # not opened (a pipe, a device, library use)
            self.target.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self._ident is None:
            fd = os.open(self.target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        else:
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND)
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != self._ident:
                os.close(fd)
                raise FileExistsError(errno.EEXIST, "it was replaced by another file during the run")
        info = os.fstat(fd)
        self._ident = (info.st_dev, info.st_ino)
        return fd

    def _undo(self) -> None:
        """Cut a partly written record off (needs no free space)."""
        if self._fd is not None:
            try:
                if stat.S_ISREG(os.fstat(self._fd).st_mode):
                    os.ftruncate(self._fd, self._end)
            except OSError:
                pass

    def _error(self, e: OSError) -> StoreError:
        kept = f"the {self.written} result(s) written before are safe; " if self.written else ""
        return StoreError(
            f"{self.path}: cannot write the results ({e.strerror or e}); the run stopped: "
            f"{kept}fix it and rerun the same command to continue"
        )

    def rewrite(self, select: Callable[[list[dict]], list[dict]]) -> bool:
        """Compaction: replace the file, atomically, with ``select(records)`` of the records
        on disk now. False (and the file as it is) when there is nothing to compact, or the
        file is no longer the one this run checked and wrote; StoreError when writing fails
        (the file is left as it was)."""
        if not self.resumable:
            return False
        with self._lock:
            self._close_fd()
            try:
                with open(self.target, "rb") as f:
                    info = os.fstat(f.fileno())
                    data = f.read()
            except FileNotFoundError:
                return False
            except OSError as e:
                raise self._error(e) from None
            if self._ident is not None and (info.st_dev, info.st_ino) != self._ident:
                return False  # replaced by someone else: not ours to overwrite
            try:
                records, end = (_parse_jsonl if self.fmt == "jsonl" else _parse_csv)(data)
            except _NotOurs:
                return False  # changed by someone else: every record we wrote is there, uncompacted
            if end != len(data):
                return False
            chosen = select(records)
            if info.st_nlink > 1:  # a rename would leave its other names on the old content: two files
                if chosen:
                    return False  # left uncompacted: every record is there, and resume reads the last
                try:  # nothing kept (--overwrite): emptied in place
                    os.truncate(self.target, 0)
                except OSError as e:
                    raise self._error(e) from None
                self._wrote_header = False
                return True
            new = self._serialize(chosen, header=True)
            if new == data:
                return True
            self._replace(new, stat.S_IMODE(info.st_mode))
            return True

    def _replace(self, data: bytes, mode: int) -> None:
        target = self.target
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error(e) from None
        info = os.stat(target)
        self._ident = (info.st_dev, info.st_ino)
        self._wrote_header = True

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        """Close the file and give the run's lock back."""
        self._close_fd()
        if self._run_lock is not None:
            self._run_lock.release()
            self._run_lock = None


def _resolve(path: Path) -> Path:
    """Where the records go: a symlink's target, once (a regular file, or one to be created);
    a device or pipe (``/dev/stdout``, ``/dev/full``) as named."""
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = True  # not there yet (or a dangling link: its target is created)
    return Path(os.path.realpath(path)) if regular else path


# --- reading a results file -------------------------------------------------------------------


class _NotOurs(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def _parse_jsonl(data: bytes) -> tuple[list[dict], int]:
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    records = []
    for n, line in enumerate(lines, 1):
        try:
            value = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise _NotOurs(n, "not UTF-8 text") from None
        except (ValueError, RecursionError):
            raise _NotOurs(n, "not a JSON line") from None
        records.append(_checked(value, n))
    tail = data[end:]
    if tail and not (tail.startswith(_JSONL_START) or _JSONL_START.startswith(tail)):
        raise _NotOurs(len(lines) + 1, "not a stepaudio record")
    return records, end


def _parse_csv(data: bytes) -> tuple[list[dict], int]:
    end = _csv_complete_prefix(data)
    body, tail = data[:end], data[end:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _NotOurs(body[: e.start].count(b"\n") + 1, "not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    try:
        header = next(reader, None)
        if header is None:  # no whole line: at most the start of our header, torn
            if tail and not _CSV_HEADER.startswith(tail):
                raise _NotOurs(1, "not the header of a stepaudio CSV results file")
            return [], 0
        if header != CSV_FIELDS:
            raise _NotOurs(1, "not the header of a stepaudio CSV results file")
        for row in reader:
            if len(row) != len(CSV_FIELDS):
                raise _NotOurs(reader.line_num, f"{len(row)} cells, not {len(CSV_FIELDS)}")
            try:
                record = from_csv_row(dict(zip(CSV_FIELDS, row)))
            except (ValueError, RecursionError) as e:
                raise _NotOurs(reader.line_num, f"not a stepaudio record ({e})") from None
            records.append(_checked(record, reader.line_num))
        torn = next(csv.reader(io.StringIO(tail.decode("utf-8", errors="replace"), newline="")), [])
    except csv.Error as e:
        raise _NotOurs(reader.line_num, f"not CSV ({e})") from None
    if len(torn) > len(CSV_FIELDS):
        raise _NotOurs(reader.line_num + 1, "not a stepaudio record")
    return records, end


def _checked(value: object, line: int) -> dict:
    try:
        check_record(value)
    except ValueError as e:
        raise _NotOurs(line, f"not a stepaudio record ({e})") from None
    return value


def _csv_complete_prefix(data: bytes) -> int:
    """Length of ``data`` up to the end of its last complete CSV record (a newline outside
    quotes; escaped quotes come in pairs, so parity works)."""
    end = pos = 0
    in_quotes = False
    for piece in data.split(b"\n")[:-1]:
        pos += len(piece) + 1
        in_quotes ^= piece.count(b'"') % 2 == 1
        if not in_quotes:
            end = pos
    return end


_MAGIC = (
    (b"fLaC", "a FLAC audio file"),
    (b"OggS", "an Ogg audio file"),
    (b"ID3", "an MP3 audio file"),
    (b"\x1a\x45\xdf\xa3", "a Matroska/WebM file"),
    (b"FORM", "an AIFF audio file"),
    (b"caff", "a CAF audio file"),
    (b"PK\x03\x04", "a zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "a program"),
)


def _sniff(data: bytes) -> str | None:
    """What a file that is plainly not a results file is (audio, an archive, binary data)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "a WAV audio file"
    if data[4:8] == b"ftyp":
        return "an MP4/M4A file"
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if b"\0" in data[:4096]:
        return "binary data"
    return None


# --- the run's lock ------------------------------------------------------------------------------


class _RunLock:
    """An exclusive POSIX lock on ``.NAME.lock`` beside the results file, for one run.

    POSIX (``lockf``) locks belong to the process: the kernel drops them when it dies (kill -9
    included) and a forked child (an engine worker that outlives us for a moment) never holds
    them. The lock file is removed at the end; a run that locked a file just removed (its
    holder finished) sees that the name points elsewhere and tries again."""

    def __init__(self, results: Path, shown: Path) -> None:
        self.path = results.with_name(f".{results.name}.lock")
        self.shown = shown
        self._fd: int | None = None

    def acquire(self) -> None:
        key = str(self.path)
        if key in _HELD:
            raise ResultsBusyError(f"{self.shown}: this process is already writing to it")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                raise StoreError(f"{self.shown}: cannot create the lock file {self.path} ({e.strerror or e})") from None
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = _holder(fd)
                os.close(fd)
                if e.errno not in (errno.EACCES, errno.EAGAIN):
                    raise StoreError(f"{self.shown}: cannot lock {self.path} ({e.strerror or e})") from None
                raise ResultsBusyError(
                    f"{self.shown}: another stepaudio batch is writing to it ({holder}); "
                    "wait for it to finish or stop it, then rerun"
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its holder finished and removed it: lock the one the name points to now
        content = os.pread(fd, 4096, 0)
        if not _LOCK_TEXT.match(content):
            os.close(fd)
            raise StoreError(
                f"{self.shown}: {self.path} exists and is not a stepaudio lock file; it was left unchanged"
            )
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} started {started}\n".encode(), 0)
        self._fd = fd
        _HELD.add(key)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: a run that opened it sees the name gone
        os.close(self._fd)
        self._fd = None
        _HELD.discard(str(self.path))


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") else "its process id is unknown"
