"""The batch result store: append-only JSONL or CSV, durable per record, resumable.

Every record is written with one ``write`` of a complete line, flushed and fsynced, so a
crash (even ``kill -9``) loses at most the line being written; its torn tail is cut off the
next time the file is opened. At the end of a run the file is compacted (atomically): one
record per input file, in input order.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import stat
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from stepaudio_cli.errors import StoreError, UserError
from stepaudio_cli.records import CSV_FIELDS, from_csv_row, to_csv_row


class Store:
    """Where batch records go. ``path`` None means stdout (no resume, no compaction); so
    does a path that is not a regular file (``/dev/stdout``, a pipe)."""

    def __init__(self, path: Path | None, fmt: str = "jsonl", stdout=None) -> None:
        if fmt not in ("jsonl", "csv"):
            raise UserError(f"--format must be jsonl or csv, not {fmt!r}")
        self.path = path
        self.fmt = fmt
        self._stdout = stdout
        self._lock = threading.Lock()  # one writer of lines at a time
        self._sync_lock = threading.Lock()  # one fsync at a time
        self.written = 0  # records written by this run
        self._synced = 0  # lines known to be on disk
        self._fd: int | None = None
        self._wrote_header = False
        self._end = 0  # size of the file up to its last complete record

    @property
    def resumable(self) -> bool:
        """A regular file (or one to be created): read back on resume, compacted at the end."""
        if self.path is None:
            return False
        try:
            return stat.S_ISREG(self.path.stat().st_mode)
        except FileNotFoundError:
            return True
        except OSError:
            return False

    # --- reading ----------------------------------------------------------------------
    def load(self) -> list[dict]:
        """Existing records; cuts a torn last line (from a crash) off the file first."""
        if not self.resumable or not self.path.exists():
            return []
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise UserError(f"{self.path}: cannot read ({e.strerror or e})") from None
        good = self._complete_prefix(data)
        if good != len(data):
            with open(self.path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
            data = data[:good]
        text = data.decode("utf-8", errors="replace")
        records = []
        if self.fmt == "jsonl":
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    records.append(json.loads(line))
                except ValueError:
                    raise UserError(f"{self.path}:{n}: not a JSON line; not a stepaudio results file?") from None
        else:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if text and (reader.fieldnames is None or "file" not in reader.fieldnames):
                raise UserError(f"{self.path}: not a stepaudio CSV results file (no 'file' column)")
            records = [from_csv_row(row) for row in reader]
            self._wrote_header = bool(text)
        return records

    def _complete_prefix(self, data: bytes) -> int:
        """Length of ``data`` up to the end of its last complete record."""
        if not data or data.endswith(b"\n") and (self.fmt == "jsonl" or not _inside_quotes(data)):
            return len(data)
        if self.fmt == "jsonl":
            return data.rfind(b"\n") + 1
        end = 0
        in_quotes = False
        for i, byte in enumerate(data):
            if byte == 0x22:  # '"' (escaped quotes come in pairs, so parity works)
                in_quotes = not in_quotes
            elif byte == 0x0A and not in_quotes:
                end = i + 1
        return end

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
            if self.path is None:
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
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._end = os.fstat(self._fd).st_size
        info = os.fstat(self._fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0:
            raise FileNotFoundError(2, "the file (or its folder) was removed during the run")
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._end += len(data)

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

    def rewrite(self, records: list[dict]) -> None:
        """Atomically replace the file with ``records`` (compaction). On failure the file is
        left as it was and StoreError says why."""
        if not self.resumable:
            return
        with self._lock:
            self.close()
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "wb") as f:
                    f.write(self._serialize(records, header=True))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as e:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise self._error(e) from None
            self._wrote_header = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _inside_quotes(data: bytes) -> bool:
    return data.count(b'"') % 2 == 1
