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
    return Store(None, "csv")._serialize(recs, header=True)


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
    "csv-short-row": ("r.csv", _csv_file(a_record()) + b"y.wav,,\n", "csv", ":3: 3 cells, not 16"),
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
    assert batch(*args, "--system", "Be brief.").exit_code == 0  # recomputed: compaction replaces the file
    assert link.is_symlink() and os.readlink(link) == str(target)
    recs = [json.loads(ln) for ln in target.read_text().splitlines()]
    assert len(recs) == 3 and all(r["params"]["system"] == "Be brief." for r in recs)
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
