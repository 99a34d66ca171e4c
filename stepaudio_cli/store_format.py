"""A results file's bytes: JSONL or CSV records in, records out (``store.py`` holds the file).

Reading decides what a file is before anything may change it:

- every whole line must be one of our records (``records.check_record``; numbers finite);
- the last line may lack its newline: a whole record there is kept (``Parsed.add_newline``), and
  only a last line that is not a whole record is torn (``Parsed.end`` stops before it), and
  only in a file already shown to be ours (a whole record before it, or CSV's header line);
- anything else is ``NotOurs``, with the line and the reason; ``sniff`` names plain foreign
  files (audio, archives, binary data) and ``other_format`` a results file of the other format.

CSV files written before the ``windows`` and ``warnings`` columns read back as they are;
``Parsed.header`` says which layout a file has, so that rows appended to it match it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

from stepaudio_cli.records import CSV_FIELDS, CSV_FIELDS_V1, check_record, finite_float, from_csv_row, to_csv_row

_LAYOUTS = (CSV_FIELDS, CSV_FIELDS_V1)
_KEY = re.compile(r"[0-9a-f]{32}")  # a record's key: CSV's last cell, whole


class NotOurs(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


@dataclass
class Parsed:
    records: list[dict]
    end: int  # bytes up to the end of the last whole record (a torn line after it is cut)
    add_newline: bool = False  # the last record is whole but lacks its newline
    header: list[str] | None = None  # CSV: the file's columns (None: no header yet)


def parse(fmt: str, data: bytes) -> Parsed:
    return (parse_jsonl if fmt == "jsonl" else parse_csv)(data)


def serialize(fmt: str, records: Iterable[dict], columns: list[str] | None = None, header: bool = False) -> bytes:
    """Records as lines; CSV rows in the layout ``columns`` (default: the current one), after
    the header line when ``header``."""
    records = [_finite(r) for r in records]
    if fmt == "jsonl":
        return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
    columns = columns or CSV_FIELDS
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    for r in records:
        writer.writerow(to_csv_row(r))
    return buf.getvalue().encode()


def _finite(value):
    """A record as JSON can hold it again: a non-finite float (none should reach a record) is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# --- JSONL ---------------------------------------------------------------------------------------


def _json_record(line: bytes, n: int) -> dict:
    try:
        value = json.loads(line.decode("utf-8"), parse_float=finite_float, parse_constant=finite_float)
    except UnicodeDecodeError:
        raise NotOurs(n, "not UTF-8 text") from None
    except (ValueError, RecursionError) as e:
        reason = str(e) if "finite" in str(e) else "not a JSON line"
        raise NotOurs(n, reason if reason == "not a JSON line" else f"not a stepaudio record ({reason})") from None
    return _checked(value, n)


def parse_jsonl(data: bytes) -> Parsed:
    end = data.rfind(b"\n") + 1
    lines = data[:end].split(b"\n")[:-1]
    records = [_json_record(line, n) for n, line in enumerate(lines, 1)]
    tail = data[end:]
    if not tail:
        return Parsed(records, end)
    n = len(lines) + 1
    try:
        last = json.loads(tail.decode("utf-8"), parse_float=finite_float, parse_constant=finite_float)
    except (ValueError, RecursionError):  # not whole JSON: torn, if the file is ours at all
        if not records:
            raise NotOurs(n, "not a stepaudio record") from None
        return Parsed(records, end)
    records.append(_checked(last, n))  # whole JSON: one of our records, or not ours
    return Parsed(records, len(data), add_newline=True)


# --- CSV -------------------------------------------------------------------------------------------


def parse_csv(data: bytes) -> Parsed:
    end = _csv_complete_prefix(data)
    body, tail = data[:end], data[end:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotOurs(body[: e.start].count(b"\n") + 1, "not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[dict] = []
    try:
        header = next(reader, None)
        if header is None:  # no whole line: nothing shows that it is ours
            if tail:
                raise NotOurs(1, "not the header of a stepaudio CSV results file")
            return Parsed([], 0)
        if header not in _LAYOUTS:
            raise NotOurs(1, "not the header of a stepaudio CSV results file")
        for row in reader:
            records.append(_csv_record(header, row, reader.line_num))
        line = reader.line_num + 1
        last = next(csv.reader(io.StringIO(tail.decode("utf-8", errors="replace"), newline="")), [])
    except csv.Error as e:
        raise NotOurs(reader.line_num, f"not CSV ({e})") from None
    if not tail:
        return Parsed(records, end, header=header)
    if len(last) > len(header):
        raise NotOurs(line, "not a stepaudio record")
    if len(last) == len(header) and _KEY.fullmatch(last[-1]) and tail.count(b'"') % 2 == 0:
        records.append(_csv_record(header, last, line))  # a whole row without its newline: ours, or not ours
        return Parsed(records, len(data), add_newline=True, header=header)
    return Parsed(records, end, header=header)  # torn mid-row


def _csv_record(header: list[str], row: list[str], line: int) -> dict:
    if len(row) != len(header):
        raise NotOurs(line, f"{len(row)} cells, not {len(header)}")
    try:
        record = from_csv_row(dict(zip(header, row)))
    except (ValueError, RecursionError) as e:
        raise NotOurs(line, f"not a stepaudio record ({e})") from None
    return _checked(record, line)


def _checked(value: object, line: int) -> dict:
    try:
        check_record(value)
    except ValueError as e:
        raise NotOurs(line, f"not a stepaudio record ({e})") from None
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


# --- what a foreign file is ----------------------------------------------------------------------

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


def sniff(data: bytes) -> str | None:
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


def other_format(fmt: str, data: bytes) -> str | None:
    """The other format's name when ``data`` is a results file of ours in it."""
    other = "csv" if fmt == "jsonl" else "jsonl"
    try:
        parse(other, data)
    except NotOurs:
        return None
    return other
