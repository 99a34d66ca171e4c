"""The results file of `batch`: nothing changed before it is known to be ours and whole, one
writer (a lock, two real processes), compaction through a symlink and exclusive temp files,
CSV cells a spreadsheet will not run, and inputs that cannot be read being that file's
failure. A scripted OpenAI-compatible server on loopback stands in for vLLM: no engine."""

from __future__ import annotations

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import ffmpeg, reply_json, tone, write_wav
from typer.testing import CliRunner

from stepaudio_cli.audio import load_file
from stepaudio_cli.cli import app
from stepaudio_cli.errors import AudioError
from stepaudio_cli.records import CSV_FIELDS, FIELDS, from_csv_row, to_csv_row
from stepaudio_cli.store import Store
from stepaudio_cli.store_format import serialize

runner = CliRunner()
NOWHERE = "http://127.0.0.1:9"  # never contacted: these runs stop before any engine starts


class Scripted(BaseHTTPRequestHandler):
    """Lists one model (context 4,096 tokens); answers every chat request with ``reasoning``
    and ``answer``, streamed, once ``gate`` is open."""

    reasoning = "Listening."
    answer = "A tone."
    gate: threading.Event
    asked: threading.Event

    def log_message(self, *args):
        pass

    def do_GET(self):
        reply_json(self, {"data": [{"id": "scripted", "max_model_len": 4096}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if not self.path.endswith("/chat/completions"):
            reply_json(self, {"error": "not here"}, status=404)
            return
        self.asked.set()
        self.gate.wait(120)
        events = [
            {"choices": [{"index": 0, "delta": {"reasoning_content": self.reasoning}}]},
            {"choices": [{"index": 0, "delta": {"content": self.answer}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 5}},
        ]
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted(http_servers):
    def start(**attrs) -> tuple[str, type]:
        handler = type("H", (Scripted,), {"gate": threading.Event(), "asked": threading.Event(), **attrs})
        handler.gate.set()
        return http_servers(handler), handler

    return start


def batch(*args: str):
    return runner.invoke(app, ["batch", *args])


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


def audio_dir(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        write_wav(root / f"{i:02d}.wav", tone(1.0, freq=200 + 10 * i))
    return root


def a_record(**fields) -> dict:
    return dict.fromkeys(FIELDS) | {"file": "x.wav", "key": "k"} | fields


# --- a file that is not ours is left as it is ------------------------------------------------------


def _jsonl(*recs) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def _csv_file(*recs) -> bytes:
    return serialize("csv", recs, header=True)


def _csv_line(**cells) -> bytes:
    return (",".join(cells.get(k, "") for k in CSV_FIELDS) + "\n").encode()


NOT_OURS = {
    # name: (file name, content, --format, what the message says)
    "wav": ("take1.wav", None, "jsonl", "is a WAV audio file, not a stepaudio results file"),
    "notes": ("notes.txt", b"shopping\nmilk\neggs", "jsonl", ":1: not a JSON line"),
    "notes-one-line": ("notes.txt", b"remember the milk", "jsonl", ":1: not a stepaudio record"),
    "jsonl-as-csv": (
        "r.jsonl",
        _jsonl(*[a_record(file=f"{i}.wav") for i in range(12)]),
        "csv",
        "is a stepaudio JSONL results file, not CSV: give --format jsonl",
    ),
    "csv-as-jsonl": ("r.csv", _csv_file(a_record()), "jsonl", "is a stepaudio CSV results file, not JSONL"),
    "a-list": (
        "r.jsonl",
        _jsonl(a_record(), [1, 2]),
        "jsonl",
        ":2: not a stepaudio record (a JSON list, not an object)",
    ),
    "missing-keys": (
        "r.jsonl",
        _jsonl(a_record(), {"file": "a.wav"}) + b'{"file": "b.w',
        "jsonl",
        ":2: not a stepaudio record (no 'sha256'",
    ),
    "wrong-type": ("r.jsonl", _jsonl(a_record(usage="many")), "jsonl", ":1: not a stepaudio record ('usage' is not"),
    "file-a-number": ("r.jsonl", _jsonl(a_record(file=3)), "jsonl", "'file' is not a string"),
    "not-utf8": ("r.jsonl", _jsonl(a_record()) + b'{"file": "\xff\xfe"}\n', "jsonl", ":2: not UTF-8 text"),
    "csv-bad-number": (
        "r.csv",
        _csv_file(a_record()) + _csv_line(file="y.wav", audio_seconds="many"),
        "csv",
        ":3: not a stepaudio record",
    ),
    "csv-short-row": ("r.csv", _csv_file(a_record()) + b"y.wav,,\n", "csv", ":3: 3 cells, not 18"),
    "csv-other-header": ("r.csv", b"file,answer\na.wav,yes\n", "csv", ":1: not the header of a stepaudio CSV"),
}


@pytest.mark.parametrize("case", list(NOT_OURS))
def test_a_file_that_is_not_ours_is_refused_and_left_unchanged(tmp_path, case):
    name, content, fmt, says = NOT_OURS[case]
    out = tmp_path / name
    if content is None:
        write_wav(out, tone(1.0))
    else:
        out.write_bytes(content)
    before = out.read_bytes()
    inputs = audio_dir(tmp_path / "in", 1)
    result = batch(str(inputs), "-p", "Q", "-s", NOWHERE, "-o", str(out), "-f", fmt)
    assert result.exit_code == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out}") and says in line and "left unchanged" in line, line
    assert out.read_bytes() == before
    # nothing else was left beside it either (lock file, temp files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in", name])


def test_overwrite_too_refuses_a_file_that_is_not_ours(tmp_path):
    out = write_wav(tmp_path / "take1.wav", tone(1.0))
    before = out.read_bytes()
    result = batch(str(audio_dir(tmp_path / "in", 1)), "-p", "Q", "-s", NOWHERE, "-o", str(out), "--overwrite")
    assert result.exit_code == 2 and "is a WAV audio file" in error_lines(result)[0]
    assert out.read_bytes() == before


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_results_that_are_one_of_the_inputs_are_refused(tmp_path, how):
    inputs = audio_dir(tmp_path / "in", 2)
    victim = inputs / "01.wav"
    out = {"same": victim, "symlink": tmp_path / "out.jsonl", "hardlink": tmp_path / "out.jsonl"}[how]
    if how == "symlink":
        out.symlink_to(victim)
    elif how == "hardlink":
        os.link(victim, out)
    before = victim.read_bytes()
    result = batch(str(inputs), "-p", "Q", "-s", NOWHERE, "-o", str(out))
    assert result.exit_code == 2
    assert error_lines(result) == [
        f"error: {out}: is one of the inputs ({victim}); give the results another name with -o"
    ]
    assert victim.read_bytes() == before


def test_only_a_torn_last_record_is_cut(tmp_path):
    good = [a_record(file="a.wav"), a_record(file="b.wav", answer="two\nlines")]
    out = tmp_path / "r.jsonl"
    out.write_bytes(_jsonl(*good) + json.dumps(a_record(file="c.wav")).encode()[:30])
    store = Store(out)
    try:
        assert store.open() == good
    finally:
        store.close()
    assert out.read_bytes() == _jsonl(*good)
    csv_out = tmp_path / "r.csv"
    whole = _csv_file(*good)
    csv_out.write_bytes(whole + b'c.wav,,,,"torn\nmid')
    store = Store(csv_out, "csv")
    try:
        assert [r["file"] for r in store.open()] == ["a.wav", "b.wav"]
    finally:
        store.close()
    assert csv_out.read_bytes() == whole
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the lock file went with the run


# --- one writer ----------------------------------------------------------------------------------------


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", "batch", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.mark.parametrize("end", ["finishes", "kill-9"])
def test_a_second_run_on_the_same_results_is_refused_naming_the_first(scripted, tmp_path, end):
    url, server = scripted()
    server.gate.clear()  # the first run waits on its first answer, holding the results file
    inputs = audio_dir(tmp_path / "in", 4)
    out = tmp_path / "r.jsonl"
    args = [str(inputs), "-p", "Q", "-s", url, "-o", str(out), "--concurrency", "1"]
    first = _spawn(args, tmp_path / "first.log")
    try:
        assert server.asked.wait(60), (tmp_path / "first.log").read_text()
        second = batch(*args)
        assert second.exit_code == 73
        (line,) = error_lines(second)
        assert line.startswith(f"error: {out}: another stepaudio batch is writing to it (pid {first.pid} started 20")
        assert line.endswith("; wait for it to finish or stop it, then rerun")
        if end == "kill-9":
            os.killpg(first.pid, signal.SIGKILL)
            assert first.wait(30) == -signal.SIGKILL
        server.gate.set()
        if end == "finishes":
            assert first.wait(60) == 0, (tmp_path / "first.log").read_text()
    finally:
        server.gate.set()
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)
    again = batch(*args)  # the lock is free again, whatever way the first run ended
    assert again.exit_code == 0, again.stderr
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [Path(r["file"]).name for r in recs] == [f"{i:02d}.wav" for i in range(4)]  # exactly one each
    assert ("already done" in again.stderr) == (end == "finishes")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", "in", "r.jsonl"]


# --- compaction ------------------------------------------------------------------------------------------


def test_a_symlinked_results_file_stays_one_file(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 3)
    (tmp_path / "data").mkdir()
    target = tmp_path / "data" / "r.jsonl"
    link = tmp_path / "r.jsonl"
    link.symlink_to(target)
    args = [str(inputs), "-p", "Q", "-s", url, "-o", str(link)]
    assert batch(*args).exit_code == 0
    os.chmod(target, 0o640)
    with target.open("a") as f:  # a stale copy of a record: compaction replaces the file without it
        f.write(target.read_text().splitlines()[0] + "\n")
    assert batch(*args, "--system", "Be brief.").exit_code == 0  # another question: its records are added
    assert link.is_symlink() and os.readlink(link) == str(target)
    recs = [json.loads(ln) for ln in target.read_text().splitlines()]
    assert [r["params"]["system"] for r in recs] == [None] * 3 + ["Be brief."] * 3
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)  # the file's mode survives compaction
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "in", "r.jsonl"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["r.jsonl"]  # no temp or lock file left


def test_a_hard_linked_results_file_keeps_one_content(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 2)
    out, other = tmp_path / "r.jsonl", tmp_path / "also.jsonl"
    args = [str(inputs), "-p", "Q", "-s", url, "-o", str(out)]
    assert batch(*args).exit_code == 0
    os.link(out, other)
    assert batch(*args, "--system", "Be brief.").exit_code == 0  # not compacted: a rename would split the names
    assert os.path.samefile(out, other)
    recs = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["params"]["system"] for r in recs] == [None, None, "Be brief.", "Be brief."]
    again = batch(*args, "--system", "Be brief.")
    assert again.exit_code == 0 and "already done" in again.stderr  # resume reads the last record of each
    assert batch(*args, "--overwrite").exit_code == 0  # emptied in place, then written again
    assert os.path.samefile(out, other) and len(out.read_text().splitlines()) == 2


def test_compaction_keeps_what_is_on_disk(tmp_path):
    out = tmp_path / "r.jsonl"
    store = Store(out)
    store.open()
    try:
        store.append(a_record(file="a.wav"))
        with out.open("ab") as f:  # written by someone else meanwhile
            f.write(_jsonl(a_record(file="b.wav")))
        assert store.rewrite(lambda on_disk: on_disk[::-1])
    finally:
        store.close()
    assert [json.loads(ln)["file"] for ln in out.read_text().splitlines()] == ["b.wav", "a.wav"]


def test_temp_files_of_a_killed_compaction_are_removed_and_others_kept(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_bytes(_jsonl(a_record()))
    stale = tmp_path / ".r.jsonl.k3x_9q0a.tmp"  # as mkstemp names them; a kill -9 left it
    stale.write_bytes(b"half a compaction")
    others = [tmp_path / name for name in (".r.jsonl.notes.tmp", ".other.jsonl.k3x_9q0a.tmp", "r.jsonl.k3x_9q0a.tmp")]
    for other in others:
        other.write_bytes(b"not ours")
    store = Store(out)
    store.open()
    store.close()
    assert not stale.exists() and all(o.read_bytes() == b"not ours" for o in others)


# --- CSV a spreadsheet will not run ------------------------------------------------------------------------


def test_csv_formula_cells_are_neutralised_and_read_back_exactly():
    texts = ['=HYPERLINK("http://x","y")', "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'quoted", "plain", "a=b"]
    for text in texts:
        record = a_record(answer=text, reasoning=text, file=text + ".wav", error=text, model=text)
        row = to_csv_row(record)
        shown = text if text[0] not in "=+-@\t\r'" else "'" + text
        assert [row[k] for k in ("answer", "reasoning", "error", "model")] == [shown] * 4
        assert row["file"] == shown + ".wav"
        back = from_csv_row({k: "" if row.get(k) is None else str(row[k]) for k in CSV_FIELDS})
        assert (back["answer"], back["file"], back["error"]) == (text, text + ".wav", text)


def test_csv_results_from_a_hostile_server_resume(scripted, tmp_path):
    url, _ = scripted(reasoning="-1+1", answer='=HYPERLINK("http://evil","click")')
    inputs = audio_dir(tmp_path / "in", 2)
    write_wav(inputs / "=cmd.wav", tone(0.5))
    out = tmp_path / "r.csv"
    args = [str(inputs), "-p", "Q", "-s", url, "-o", str(out), "-f", "csv"]
    assert batch(*args).exit_code == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["answer"] for r in rows] == ['\'=HYPERLINK("http://evil","click")'] * 3
    assert {r["reasoning"] for r in rows} == {"'-1+1"}
    assert "'" + str(inputs / "=cmd.wav") not in [r["file"] for r in rows]  # the path starts with /: as it is
    before = out.read_bytes()
    again = batch(*args)
    assert again.exit_code == 0 and "already done" in again.stderr
    assert out.read_bytes() == before
    jsonl = tmp_path / "r.jsonl"
    assert batch(*args[:-2], "-o", str(jsonl)).exit_code == 0
    assert {json.loads(ln)["answer"] for ln in jsonl.read_text().splitlines()} == {'=HYPERLINK("http://evil","click")'}


# --- inputs that cannot be used are their own failures ----------------------------------------------------


def _sparse_wav(path: Path, seconds: float, sr: int = 16000) -> Path:
    """A 16-bit mono WAV of ``seconds`` of silence, as a sparse file (no disk, nothing to read)."""
    size = int(seconds * sr) * 2
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, sr, sr * 2, 2, 16)
    with path.open("wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + size) + b"WAVE" + fmt + b"data" + struct.pack("<I", size))
        f.truncate(44 + size)
    return path


def test_inputs_that_cannot_be_used_are_each_their_own_failure(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 2)
    write_wav(inputs / "long.wav", tone(400.0))  # the server's context is 4,096 tokens: about 5 minutes
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    locked = write_wav(tmp_path / "locked.wav", tone(1.0))
    locked.chmod(0)
    out = tmp_path / "r.jsonl"
    result = batch(str(inputs), str(fifo), str(locked), "-p", "Q", "-s", url, "-o", str(out), "--no-window")
    assert result.exit_code == 1, result.stderr
    assert not error_lines(result)
    recs = {Path(r["file"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(recs) == ["00.wav", "01.wav", "fifo.wav", "locked.wav", "long.wav"]
    assert recs["00.wav"]["answer"] == recs["01.wav"]["answer"] == "A tone."
    assert recs["long.wav"]["error"].startswith("6m40s of audio needs ") and recs["long.wav"]["audio_seconds"] == 400.0
    assert recs["fifo.wav"]["error"] == "cannot read (not a regular file)"
    if os.geteuid() != 0:  # root reads it anyway
        assert recs["locked.wav"]["error"] == "cannot read (Permission denied)"


def test_audio_longer_than_the_context_is_refused_before_it_is_read(tmp_path):
    five_hours = _sparse_wav(tmp_path / "header.wav", 5 * 3600)  # refused from its header alone
    with pytest.raises(AudioError) as err:
        load_file(five_hours, "header.wav")  # no context: a recording answered in windows
    assert err.value.message == (
        "header.wav: 5h00m of audio is more than the 4h00m stepaudio answers in windows (0.9 GiB decoded); "
        "split it into parts under 4h00m"
    )
    m4a = tmp_path / "40s.m4a"  # ffmpeg's formats: it stops decoding past the limit
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=40", "-c:a", "aac", "-b:a", "16k", str(m4a))
    with pytest.raises(AudioError) as err:
        load_file(m4a, "40s.m4a", context_tokens=400)  # one 25 s chunk
    assert err.value.message == (
        "40s.m4a: over 25.0s of audio does not fit max model length 400 (about 25.0s at most); "
        "use shorter audio or raise --max-model-len"
    )
    assert load_file(m4a, "40s.m4a", context_tokens=1000).duration == pytest.approx(40, abs=0.1)


def test_a_second_store_in_one_process_is_refused(tmp_path):
    out = tmp_path / "r.jsonl"
    first = Store(out)
    first.open()
    try:
        with pytest.raises(Exception, match="this process is already writing to it"):
            Store(out).open()
    finally:
        first.close()
    second = Store(out)
    second.open()
    second.close()


# --- a results file holds many questions ------------------------------------------------------------


def _records(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_second_question_adds_its_records_and_keeps_the_first_s(scripted, tmp_path, fmt):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 3)
    out = tmp_path / f"r.{fmt}"
    args = [str(inputs), "-s", url, "-o", str(out)]
    assert batch(*args, "-p", "Q1").exit_code == 0
    second = batch(*args, "-p", "Q2")
    assert second.exit_code == 0, second.stderr
    assert "2 in the results file (records: 'Q1': 3, 'Q2': 3)" in second.stderr
    read = Store(out, fmt)
    try:
        prompts = [r["prompt"] for r in read.open()]
    finally:
        read.close()
    assert prompts == ["Q1"] * 3 + ["Q2"] * 3
    again = batch(*args, "-p", "Q1")  # each question resumes on its own
    assert again.exit_code == 0 and "already done" in again.stderr
    assert out.read_bytes().count(b"\n") == (6 if fmt == "jsonl" else 7)


def test_replace_keeps_the_earlier_results_beside_until_the_run_completes(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 2)
    out = tmp_path / "r.jsonl"
    args = [str(inputs), "-s", url, "-o", str(out)]
    assert batch(*args, "-p", "Q1").exit_code == 0
    before = out.read_bytes()
    store = Store(out)
    assert store.open(replace=True) == []  # a run that starts over: the earlier file is beside it
    previous = tmp_path / "r.jsonl.previous"
    assert previous.read_bytes() == before and out.read_bytes() == b""
    store.close()  # the run did not complete (killed, interrupted): the copy stays
    assert previous.read_bytes() == before
    replaced = batch(*args, "-p", "Q2", "--replace")  # the kept copy is ours: a --replace reuses it
    assert replaced.exit_code == 0, replaced.stderr
    assert [r["prompt"] for r in _records(out)] == ["Q2", "Q2"]
    assert not previous.exists()  # the run completed
    previous.write_text("my notes\n")  # a file of that name that is not ours stops --replace
    refused = batch(*args, "-p", "Q3", "--replace")
    assert refused.exit_code == 2 and error_lines(refused) == [
        f"error: {previous}: exists and is not earlier results kept by --replace; it was left unchanged "
        "(move it away, then rerun)"
    ]
    assert previous.read_text() == "my notes\n" and [r["prompt"] for r in _records(out)] == ["Q2", "Q2"]


# --- the contract at its edges ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_whole_last_record_without_its_newline_is_kept(tmp_path, fmt):
    recs = [a_record(file="a.wav", key="a" * 32), a_record(file="b.wav", key="b" * 32)]
    out = tmp_path / f"r.{fmt}"
    whole = _jsonl(*recs) if fmt == "jsonl" else _csv_file(*recs)
    out.write_bytes(whole[:-1])
    store = Store(out, fmt)
    try:
        assert [r["file"] for r in store.open()] == ["a.wav", "b.wav"]
    finally:
        store.close()
    assert out.read_bytes() == whole  # the newline is added, nothing cut


FOREIGN = {
    "json.dump of a record-like object": json.dumps({"file": "x.wav", "score": 3}).encode(),
    "json.dump of a whole record": json.dumps(a_record() | {"audio_seconds": "long"}).encode(),
    "only the start of a record": b'{"file": "x.wav", "sha2',
    "only the start of our CSV header": b"file,sha256,prompt",
    "Infinity in a record": _jsonl(a_record(audio_seconds=1.0)).replace(b"1.0", b"Infinity"),
    "NaN in usage": _jsonl(a_record(usage={"prompt_tokens": 1})).replace(b"1}", b"NaN}"),
    "a number past a float": _jsonl(a_record(timings={"total": 1.0})).replace(b"1.0", b"1e999"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_foreign_file_is_refused_whatever_it_starts_with(tmp_path, case):
    out = tmp_path / ("r.csv" if "CSV" in case else "r.jsonl")
    out.write_bytes(FOREIGN[case])
    result = batch(str(audio_dir(tmp_path / "in", 1)), "-p", "Q", "-s", NOWHERE, "-o", str(out))
    assert result.exit_code == 2, result.stderr
    (line,) = error_lines(result)
    assert line.startswith(f"error: {out}") and "left unchanged" in line, line
    assert out.read_bytes() == FOREIGN[case]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", out.name]


def test_a_csv_in_the_layout_before_the_windows_column_reads_back_and_grows_in_it(scripted, tmp_path):
    url, _ = scripted()
    old_columns = [k for k in CSV_FIELDS if k not in ("windows", "warnings")]
    out = tmp_path / "r.csv"
    row = to_csv_row(a_record(file="old.wav", key="c" * 32, params={"temperature": 0.7}))
    out.write_text(",".join(old_columns) + "\n" + ",".join(str(row[k] or "") for k in old_columns) + "\n")
    hard = tmp_path / "link.csv"
    os.link(out, hard)  # not compacted (hard link): rows are appended in the file's own layout
    result = batch(str(audio_dir(tmp_path / "in", 1)), "-p", "Q", "-s", url, "-o", str(out))
    assert result.exit_code == 0, result.stderr
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == old_columns and all(len(r) == len(old_columns) for r in rows)
    os.unlink(hard)
    assert batch(str(audio_dir(tmp_path / "in2", 1)), "-p", "Q", "-s", url, "-o", str(out)).exit_code == 0
    rows = list(csv.DictReader(out.open(newline="")))  # compacted: the current layout, every row kept
    assert list(rows[0]) == CSV_FIELDS and [Path(r["file"]).name for r in rows] == ["old.wav", "00.wav", "00.wav"]


def test_dash_o_csv_writes_csv_unless_format_says_otherwise(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 1)
    out = tmp_path / "r.csv"
    assert batch(str(inputs), "-p", "Q", "-s", url, "-o", str(out)).exit_code == 0
    assert out.read_text().splitlines()[0] == ",".join(CSV_FIELDS)
    again = batch(str(inputs), "-p", "Q", "-s", url, "-o", str(out), "-f", "csv")
    assert again.exit_code == 0 and "already done" in again.stderr
    forced = tmp_path / "j.csv"
    assert batch(str(inputs), "-p", "Q", "-s", url, "-o", str(forced), "-f", "jsonl").exit_code == 0
    assert json.loads(forced.read_text())["answer"] == "A tone."


def test_one_folder_named_three_ways_is_one_set_of_files(scripted, tmp_path, monkeypatch):
    url, server = scripted()
    work = tmp_path / "w"
    work.mkdir()
    audio_dir(work / "three", 3)
    (tmp_path / "alias").symlink_to(work / "three")
    (tmp_path / "elsewhere").mkdir()
    out = tmp_path / "r.jsonl"
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert batch(str(work / "three"), "-p", "Q", "-s", url, "-o", str(out)).exit_code == 0
    for typed in ("../w/three", "../alias", str(tmp_path / "w" / ".." / "w" / "three")):
        server.asked.clear()
        again = batch(typed, "-p", "Q", "-s", url, "-o", str(out))
        assert again.exit_code == 0 and "already done" in again.stderr, again.stderr
        assert not server.asked.is_set()
    assert [r["file"] for r in _records(out)] == [str(work / "three" / f"{i:02d}.wav") for i in range(3)]


@pytest.mark.parametrize("name", ["hardlink", "symlink"])
def test_other_names_of_a_results_file_are_one_writer(scripted, tmp_path, name):
    url, server = scripted()
    server.gate.clear()
    inputs = audio_dir(tmp_path / "in", 2)
    out, other = tmp_path / "r.jsonl", tmp_path / "other.jsonl"
    out.write_bytes(b"")
    os.link(out, other) if name == "hardlink" else other.symlink_to(out)
    first = _spawn([str(inputs), "-p", "Q", "-s", url, "-o", str(out), "-c", "1"], tmp_path / "first.log")
    try:
        assert server.asked.wait(60), (tmp_path / "first.log").read_text()
        second = batch(str(inputs), "-p", "Q", "-s", url, "-o", str(other))
        assert second.exit_code == 73, second.stderr
        assert f"another stepaudio batch is writing to it (pid {first.pid} started 20" in error_lines(second)[0]
    finally:
        server.gate.set()
        assert first.wait(60) == 0, (tmp_path / "first.log").read_text()
    assert len(_records(out)) == 2


def test_a_dangling_symlink_in_a_folder_is_a_failure_record(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 1)
    (inputs / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    out = tmp_path / "r.jsonl"
    result = batch(str(inputs), "-p", "Q", "-s", url, "-o", str(out))
    assert result.exit_code == 1, result.stderr
    recs = {Path(r["file"]).name: r for r in _records(out)}
    assert recs["gone.wav"]["error"] == f"cannot read (a symlink to {tmp_path / 'nowhere.wav'}, which does not exist)"
    assert recs["00.wav"]["answer"] == "A tone."


def test_nothing_to_do_ends_at_once_without_a_server(scripted, tmp_path):
    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 2)
    out = tmp_path / "r.jsonl"
    assert batch(str(inputs), "-p", "Q", "-s", url, "-o", str(out)).exit_code == 0
    before = out.read_bytes()
    done = batch(str(inputs), "-p", "Q", "-s", NOWHERE, "-o", str(out), "--wait-server", "600")
    assert done.exit_code == 0 and "already done" in done.stderr and not error_lines(done), done.stderr
    assert out.read_bytes() == before
    more = batch(str(inputs), "-p", "Q2", "-s", NOWHERE, "-o", str(out), "--wait-server", "0")
    assert more.exit_code == 1 and "cannot connect" in error_lines(more)[0]  # work to do: a server is needed


def test_sigterm_ends_a_batch_with_143_and_nothing_lost(scripted, tmp_path):
    url, server = scripted()
    server.gate.clear()
    inputs = audio_dir(tmp_path / "in", 3)
    out = tmp_path / "r.jsonl"
    proc = _spawn([str(inputs), "-p", "Q", "-s", url, "-o", str(out), "-c", "1"], tmp_path / "log")
    try:
        assert server.asked.wait(60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143, (tmp_path / "log").read_text()
    finally:
        server.gate.set()
        if proc.poll() is None:
            proc.kill()
    assert "interrupted" in (tmp_path / "log").read_text()
    assert batch(str(inputs), "-p", "Q", "-s", url, "-o", str(out)).exit_code == 0
    assert len(_records(out)) == 3


def test_a_header_too_long_is_refused_before_the_file_is_hashed(scripted, tmp_path, monkeypatch):
    import stepaudio_cli.batch_inputs as inputs_module

    url, _ = scripted()
    folder = tmp_path / "in"
    folder.mkdir()
    _sparse_wav(folder / "5h.wav", 5 * 3600)
    hashed = []
    real = inputs_module.sha256_file
    monkeypatch.setattr(inputs_module, "sha256_file", lambda p: hashed.append(p) or real(p))
    out = tmp_path / "r.jsonl"
    args = [str(folder), "-p", "Q", "-s", url, "-o", str(out)]
    result = batch(*args)
    assert result.exit_code == 1 and not hashed
    (rec,) = _records(out)
    assert rec["error"].startswith("5h00m of audio is more than the 4h00m") and rec["sha256"] is None
    again = batch(*args)  # refused the same way: counted as failed before, not written again
    assert again.exit_code == 1 and not hashed and len(_records(out)) == 1


def test_a_memory_error_is_that_file_s_failure(scripted, tmp_path, monkeypatch):
    import stepaudio_cli.batch as core

    url, _ = scripted()
    inputs = audio_dir(tmp_path / "in", 2)
    real = core.load_file

    def tight(path, name, context):
        if name.endswith("01.wav"):
            raise MemoryError
        return real(path, name, context)

    monkeypatch.setattr(core, "load_file", tight)
    out = tmp_path / "r.jsonl"
    result = batch(str(inputs), "-p", "Q", "-s", url, "-o", str(out))
    assert result.exit_code == 1 and not error_lines(result), result.stderr
    recs = {Path(r["file"]).name: r for r in _records(out)}
    assert recs["01.wav"]["error"] == "not enough memory to decode it" and recs["00.wav"]["answer"] == "A tone."


# --- whatever a results file holds: opened, or refused untouched ---------------------------------------


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
_LINE = st.one_of(
    st.builds(lambda r: json.dumps(r).encode(), st.just(a_record())),
    st.builds(lambda k, v: json.dumps(a_record() | {k: v}).encode(), st.sampled_from(FIELDS), _VALUES),
    st.binary(max_size=20),
    st.builds(lambda r, n: json.dumps(r).encode()[:n], st.just(a_record()), st.integers(0, 60)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_LINE, max_size=4), newline=st.booleans(), fmt=st.sampled_from(["jsonl", "csv"]))
def test_any_results_file_is_opened_or_refused_untouched(tmp_path_factory, lines, newline, fmt):
    from stepaudio_cli.errors import UserError

    out = tmp_path_factory.mktemp("any") / "r.out"
    data = b"\n".join(lines) + (b"\n" if newline and lines else b"")
    out.write_bytes(data)
    store = Store(out, fmt)
    try:
        records = store.open()
    except UserError as e:
        assert str(out) in e.message and "Traceback" not in e.message
        assert out.read_bytes() == data
        return
    finally:
        store.close()
    after = out.read_bytes()  # ours: at most its torn last line cut, or its last newline added
    assert after == data or (data.startswith(after) and records) or after == data + b"\n"
