"""The batch result store: append-only JSONL or CSV, durable per record, resumable.

Every record is written with one ``write`` of a complete line, flushed and fsynced, so a
crash (even ``kill -9``) loses at most the line being written; its torn tail is cut off the
next time the file is opened. At the end of a run the file is compacted (atomically): one
record per input file, in input order.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from stepaudio_cli.errors import UserError

CSV_FIELDS = [
    "file", "sha256", "prompt", "model", "answer", "reasoning", "error", "audio_seconds",
    "prompt_tokens", "completion_tokens", "reasoning_tokens", "time_to_first_token", "total_seconds", "params", "key",
]


def _csv_row(record: dict) -> dict:
    usage = record.get("usage") or {}
    timings = record.get("timings") or {}
    return {
        "file": record["file"],
        "sha256": record.get("sha256"),
        "prompt": record.get("prompt"),
        "model": record.get("model"),
        "answer": record.get("answer"),
        "reasoning": record.get("reasoning"),
        "error": record.get("error"),
        "audio_seconds": record.get("audio_seconds"),
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "reasoning_tokens": usage.get("reasoning_tokens"),
        "time_to_first_token": timings.get("time_to_first_token"),
        "total_seconds": timings.get("total"),
        "params": json.dumps(record.get("params"), sort_keys=True),
        "key": record.get("key"),
    }


def _from_csv_row(row: dict) -> dict:
    def num(v):
        if v in (None, ""):
            return None
        return float(v) if "." in v or "e" in v else int(v)

    return {
        "file": row["file"],
        "sha256": row.get("sha256") or None,
        "prompt": row.get("prompt"),
        "model": row.get("model"),
        "answer": row.get("answer") or None,
        "reasoning": row.get("reasoning") or None,
        "error": row.get("error") or None,
        "audio_seconds": num(row.get("audio_seconds")),
        "usage": {k: num(row.get(k)) for k in ("prompt_tokens", "completion_tokens", "reasoning_tokens")},
        "timings": {"time_to_first_token": num(row.get("time_to_first_token")), "total": num(row.get("total_seconds"))},
        "params": json.loads(row["params"]) if row.get("params") else None,
        "key": row.get("key") or None,
    }


class Store:
    """Where batch records go. ``path`` None means stdout (no resume, no compaction)."""

    def __init__(self, path: Path | None, fmt: str = "jsonl", stdout=None) -> None:
        if fmt not in ("jsonl", "csv"):
            raise UserError(f"--format must be jsonl or csv, not {fmt!r}")
        self.path = path
        self.fmt = fmt
        self._stdout = stdout
        self._lock = threading.Lock()  # one writer of lines at a time
        self._sync_lock = threading.Lock()  # one fsync at a time
        self._written = 0  # lines written so far
        self._synced = 0  # lines known to be on disk
        self._fd: int | None = None
        self._wrote_header = False

    # --- reading ----------------------------------------------------------------------
    def load(self) -> list[dict]:
        """Existing records; cuts a torn last line (from a crash) off the file first."""
        if self.path is None or not self.path.exists():
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
            records = [_from_csv_row(row) for row in reader]
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
            writer.writerow(_csv_row(r))
        return buf.getvalue().encode()

    def append(self, record: dict) -> None:
        """Write one record durably: on disk when this returns (thread-safe).

        Group commit: records that finish together (a batch whose requests end on the same
        step) share one fsync instead of queueing for one each; each still returns only
        after an fsync that began after its line was written.
        """
        with self._lock:
            data = self._serialize([record], header=not self._wrote_header)
            self._wrote_header = True
            if self.path is None:
                out = self._stdout
                out.write(data.decode())
                out.flush()
                return
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._written += 1
            mine = self._written
        with self._sync_lock:
            if self._synced >= mine:  # an fsync that started after our write has finished
                return
            with self._lock:
                upto, fd = self._written, self._fd
            os.fsync(fd)
            self._synced = upto

    def rewrite(self, records: list[dict]) -> None:
        """Atomically replace the file with ``records`` (compaction)."""
        if self.path is None:
            return
        with self._lock:
            self.close()
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
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
            self._wrote_header = True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _inside_quotes(data: bytes) -> bool:
    return data.count(b'"') % 2 == 1
