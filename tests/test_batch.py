"""`stepaudio batch`: real server on loopback and the real in-process engine."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SCRIPT, noise, tone, write_wav
from typer.testing import CliRunner

from stepaudio_cli.batch import discover
from stepaudio_cli.cli import app
from stepaudio_cli.records import FIELDS

runner = CliRunner()
REASONING, ANSWER = SCRIPT


def make_tree(root: Path) -> Path:
    """good files, a bad one, nested folders, a duplicate copy, a symlink, a non-audio file."""
    (root / "calls" / "2024").mkdir(parents=True)
    write_wav(root / "a.wav", tone(2.0))
    write_wav(root / "calls" / "b.flac", noise(1.5), format="FLAC")
    write_wav(root / "calls" / "2024" / "c.wav", tone(3.0, freq=300, sr=44100, channels=2), sr=44100)
    shutil.copy(root / "a.wav", root / "calls" / "copy-of-a.wav")
    (root / "calls" / "broken.wav").write_text("definitely not audio")
    (root / "notes.txt").write_text("ignored: not an audio extension")
    os.symlink(root / "a.wav", root / "calls" / "link-to-a.wav")
    return root


def records(path: Path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def batch(*args: str):
    return runner.invoke(app, ["batch", *args])


def test_discover_is_stable_and_counts_each_real_file_once(tmp_path):
    root = make_tree(tmp_path / "tree")
    files = [str(p.relative_to(root)) for p in discover([str(root)], recursive=True)]
    # Sorted by path; the symlink to a.wav is a.wav again and counts once.
    assert files == ["a.wav", "calls/2024/c.wav", "calls/b.flac", "calls/broken.wav", "calls/copy-of-a.wav"]
    assert [str(p.relative_to(root)) for p in discover([str(root)])] == ["a.wav"]
    assert [p.name for p in discover([str(root)], ["*.flac"], recursive=True)] == ["b.flac"]


def test_batch_remote_records_every_file_and_resumes(vllm_server, tmp_path):
    root = make_tree(tmp_path / "tree")
    out = tmp_path / "results.jsonl"
    args = [
        str(root),
        "-r",
        "--prompt",
        "What is it?",
        "--server",
        vllm_server.url,
        "--api-key",
        "sekret",
        "-o",
        str(out),
    ]
    first = batch(*args)
    assert first.exit_code == 1, first.stderr  # one file is bad
    recs = {Path(r["file"]).name: r for r in records(out)}
    assert sorted(recs) == ["a.wav", "b.flac", "broken.wav", "c.wav", "copy-of-a.wav"]
    broken = str(root / "calls" / "broken.wav")
    assert recs["broken.wav"]["file"] == broken and recs["broken.wav"]["error"].startswith("not a readable audio file")
    for name in ("a.wav", "b.flac", "c.wav", "copy-of-a.wav"):
        r = recs[name]
        assert (r["reasoning"], r["answer"], r["error"]) == (REASONING, ANSWER, None)
        assert list(r) == FIELDS  # the record `ask --json` prints too
    assert recs["copy-of-a.wav"]["sha256"] == recs["a.wav"]["sha256"]
    assert recs["c.wav"]["audio_seconds"] == pytest.approx(3.0)
    assert any(ln.startswith(f"failed {broken}: not a readable audio file") for ln in first.stderr.splitlines())
    before = out.read_bytes()

    again = batch(*args)
    assert again.exit_code == 1  # the earlier failure still counts
    assert "already done" in again.stderr
    assert out.read_bytes() == before  # nothing recomputed, nothing duplicated

    (root / "calls" / "broken.wav").unlink()
    write_wav(root / "calls" / "broken.wav", tone(1.0))  # fixed by the user
    fixed = batch(*args, "--retry-failed")
    assert fixed.exit_code == 0, fixed.stderr
    recs = records(out)
    assert len(recs) == 5 and all(r["error"] is None for r in recs)


def test_batch_csv_and_hidden_reasoning(vllm_server, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        write_wav(d / f"{i}.wav", tone(1.0 + i))
    out = tmp_path / "r.csv"
    args = [
        str(d),
        "-p",
        "Q",
        "-s",
        vllm_server.url,
        "--api-key",
        "sekret",
        "-o",
        str(out),
        "--format",
        "csv",
        "--hide-reasoning",
    ]
    result = batch(*args)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == ["0.wav", "1.wav", "2.wav"]
    assert all(r["answer"] == ANSWER and r["reasoning"] == "" for r in rows)
    assert batch(*args).exit_code == 0
    assert len(list(csv.DictReader(out.open()))) == 3


def test_prompt_file_system_prompt_and_overwrite(vllm_server, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for i in range(2):
        write_wav(d / f"{i}.wav", tone(1.0 + i))
    (tmp_path / "q.txt").write_text("What is in this clip?\n")
    out = tmp_path / "r.jsonl"
    base = [
        str(d),
        "--prompt-file",
        str(tmp_path / "q.txt"),
        "-s",
        vllm_server.url,
        "--api-key",
        "sekret",
        "-o",
        str(out),
    ]
    first = batch(*base)
    assert first.exit_code == 0, first.stderr
    assert [r["prompt"] for r in records(out)] == ["What is in this clip?"] * 2
    keys = [r["key"] for r in records(out)]

    # Another system prompt is another question: computed again, not "already done", and the
    # first question's records stay.
    system = batch(*base, "--system", "Be brief.")
    assert system.exit_code == 0 and "already done" not in system.stderr
    recs = records(out)
    assert [r["params"]["system"] for r in recs] == [None, None, "Be brief.", "Be brief."]
    assert [r["key"] for r in recs[:2]] == keys and not set(keys) & {r["key"] for r in recs[2:]}

    # --replace starts over: records of other runs are dropped, each file computed once.
    out.write_text(out.read_text() + json.dumps(dict.fromkeys(FIELDS) | {"file": "gone.wav", "key": "k"}) + "\n")
    again = batch(*base, "--replace")
    assert again.exit_code == 0 and "already done" not in again.stderr
    recs = records(out)
    assert [Path(r["file"]).name for r in recs] == ["0.wav", "1.wav"] and [r["key"] for r in recs] == keys
    assert batch(*base, "--prompt", "Q").exit_code == 2  # --prompt and --prompt-file: one line, exit 2


def test_audio_too_long_for_the_context_is_that_file_s_failure(vllm_server, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    write_wav(d / "long.wav", tone(400.0))  # ~5,300 prompt tokens; the server's context is 4,096
    write_wav(d / "short.wav", tone(1.0))
    out = tmp_path / "r.jsonl"
    # --no-window: refused as one request (without it, the long file is answered in windows: test_windows.py)
    result = batch(str(d), "-p", "Q", "-s", vllm_server.url, "--api-key", "sekret", "-o", str(out), "--no-window")
    assert result.exit_code == 1, result.stderr
    recs = {Path(r["file"]).name: r for r in records(out)}
    assert recs["short.wav"]["answer"] == ANSWER
    assert (
        recs["long.wav"]["error"].startswith("6m40s of audio needs ")
        and "raise --max-model-len" in recs["long.wav"]["error"]
    )
    assert recs["long.wav"]["audio_seconds"] == pytest.approx(400.0)


def test_batch_to_stdout(vllm_server, tmp_path):
    write_wav(tmp_path / "x.wav", tone(1.0))
    result = batch(str(tmp_path / "x.wav"), "-p", "Q", "-s", vllm_server.url, "--api-key", "sekret", "-o", "-")
    assert result.exit_code == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["answer"] == ANSWER


def _spawn_batch(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", "batch", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal, however we were started
    )


def _wait_lines(path: Path, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_result_as_a_fresh_run(vllm_server, tmp_path, sig):
    d = tmp_path / "many"
    d.mkdir()
    for i in range(40):
        write_wav(d / f"{i:02d}.wav", tone(1.0 + (i % 5), freq=200 + 10 * i))
    out = tmp_path / "resumed.jsonl"
    common = ["-p", "Q", "-s", vllm_server.url, "--api-key", "sekret", "--concurrency", "2", "--seed", "7"]
    proc = _spawn_batch([str(d), *common, "-o", str(out)], tmp_path / "run1.log")
    _wait_lines(out, 5)
    os.killpg(proc.pid, sig)
    code = proc.wait(60)
    if sig == signal.SIGINT:
        assert code == 130, (tmp_path / "run1.log").read_text()
        assert "rerun the same command to resume" in (tmp_path / "run1.log").read_text()
    partial = out.read_bytes().count(b"\n")
    assert 5 <= partial < 40
    resumed = batch(str(d), *common, "-o", str(out))
    assert resumed.exit_code == 0, resumed.stderr
    assert "already done" in resumed.stderr
    fresh_out = tmp_path / "fresh.jsonl"
    assert batch(str(d), *common, "-o", str(fresh_out)).exit_code == 0

    def essence(path):
        return [(r["file"], r["sha256"], r["key"], r["reasoning"], r["answer"], r["error"]) for r in records(path)]

    assert essence(out) == essence(fresh_out)
    assert len(records(out)) == 40


def test_server_errors_are_retried_then_recorded(tmp_path):
    import threading
    from http.server import ThreadingHTTPServer

    from test_cli_ask import Replay  # a real HTTP server that answers 500

    handler = type("H", (Replay,), {"mode": "500"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        write_wav(tmp_path / "x.wav", tone(1.0))
        out = tmp_path / "r.jsonl"
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = batch(str(tmp_path / "x.wav"), "-p", "Q", "-s", url, "-o", str(out), "--retries", "1")
    finally:
        server.shutdown()
    assert result.exit_code == 1
    (rec,) = records(out)
    assert "500" in rec["error"] and "CUDA out of memory" in rec["error"] and "after 2 tries" in rec["error"]


def test_bad_arguments_are_one_line(tmp_path):
    result = batch(str(tmp_path / "nope"), "-p", "Q", "-o", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file or directory"
    (tmp_path / "empty").mkdir()
    result = batch(str(tmp_path / "empty"), "-p", "Q", "-o", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and "no audio files found" in result.stderr
    result = batch(str(tmp_path / "empty"), "-o", str(tmp_path / "r.jsonl"))
    assert result.exit_code == 2 and "--prompt" in result.stderr


@pytest.mark.engine
def test_batch_in_process(scripted_ckpt, tmp_path):
    root = make_tree(tmp_path / "tree")
    out = tmp_path / "local.jsonl"
    result = batch(str(root), "-r", "-p", "Q", "-m", str(scripted_ckpt), "-o", str(out))
    assert result.exit_code == 1, result.stderr
    recs = {Path(r["file"]).name: r for r in records(out)}
    assert len(recs) == 5
    assert all(recs[n]["answer"] == ANSWER for n in ("a.wav", "b.flac", "c.wav", "copy-of-a.wav"))
    assert recs["broken.wav"]["error"]


def test_the_first_files_reach_the_engine_before_the_last_are_decoded(tmp_path, monkeypatch):
    import asyncio

    from stepaudio_cli import audio_room, batch
    from stepaudio_cli.engines.base import Clock, Engine, Final, Usage
    from stepaudio_cli.request import Sampling
    from stepaudio_cli.store import Store

    folder = tmp_path / "clips"
    folder.mkdir()
    files = []
    for i in range(24):
        files.append(folder / f"clip{i:02d}.wav")
        write_wav(files[-1], tone(2.0, 44100, 220 + 10 * i), 44100)
    decoded: list[str] = []
    load_file = batch.load_file

    def counting_load_file(path, name, context=None):
        audio = load_file(path, name, context)
        decoded.append(name)
        return audio

    decoded_at_send: list[int] = []

    class CountingEngine(Engine):
        model, max_model_len = "m", 8192

        async def stream(self, request):
            decoded_at_send.append(len(decoded))
            yield Final(model="m", usage=Usage(prompt_tokens=1, completion_tokens=1), timings=Clock().timings(1))

    monkeypatch.setattr(batch, "load_file", counting_load_file)
    monkeypatch.setattr(audio_room, "READERS", 2)
    store = Store(tmp_path / "out.jsonl")
    job = batch.BatchJob(prompt="What is it?", sampling=Sampling(max_tokens=4), concurrency=64)
    summary = asyncio.run(batch.BatchRunner(job, CountingEngine(), store, files).run())
    store.close()
    assert summary.answered == 24 and len(decoded_at_send) == 24
    # Two files read at a time: the first request goes out while most files are still undecoded
    # (read all at once, every file finished decoding before the first request).
    assert decoded_at_send[0] <= 4
