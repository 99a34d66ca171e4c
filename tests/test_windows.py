"""Recordings longer than the context: windows cut at quiet points, mapped concurrently, then
one text-only request that combines their answers (windows.py, through ask and batch).

The planner is tested as pure functions; the map/reduce against a small scripted HTTP server
(no vLLM) that answers each window with a known text and records what it was asked; then once
in-process and once against vLLM's own server with the tiny checkpoint."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import SCRIPT, SR, reply_json, reply_stream, write_wav
from test_reasoning_length import Scripted as ScriptedBase
from typer.testing import CliRunner

from stepaudio_cli.audio import Audio
from stepaudio_cli.cli import app
from stepaudio_cli.durations import parse_duration
from stepaudio_cli.errors import AudioError, UserError
from stepaudio_cli.request import Request, Sampling, generation_room
from stepaudio_cli.windows import (
    MAX_RESERVE_TOKENS,
    WINDOW_TEXT_TOKENS,
    Windowing,
    clock,
    cut_windows,
    longest_window,
    plan,
    reasoning_reserve,
    reduce_question,
    window_question,
)

runner = CliRunner()
GAP_EVERY, GAP = 4.0, 0.8  # a silent 0.8 s every 4 s


def recording(seconds: float, silent: tuple[tuple[float, float], ...] = (), seed: int = 0) -> np.ndarray:
    """Noise with a silent gap every GAP_EVERY seconds (and at ``silent`` spans); quiet-ish
    (amplitude 0.02) gaps instead where a test needs a true silence to win."""
    x = np.random.default_rng(seed).normal(0, 0.2, int(seconds * SR)).astype(np.float32)
    for t in np.arange(2.0, seconds, GAP_EVERY):
        x[int(t * SR) : int((t + GAP) * SR)] = 0.0
    for a, b in silent:
        x[int(a * SR) : int(b * SR)] = 0.0
    return x


def is_silent_at(x: np.ndarray, seconds: float) -> bool:
    i = int(seconds * SR)
    return not np.any(x[max(0, i - SR // 10) : i + SR // 10])


def assert_well_cut(x: np.ndarray, windows, length: int) -> None:
    """Covers the whole, each window fits, consecutive windows overlap 5-10 s, and every cut
    (a window's end, the next one's start) is in silence."""
    assert windows[0].start == 0 and windows[-1].end == len(x)
    for a, b in zip(windows, windows[1:]):
        assert a.end - a.start <= length
        assert 5.0 <= a.end_s - b.start_s <= 10.0 + 0.1
        assert is_silent_at(x, a.end_s) and is_silent_at(x, b.start_s)
    assert windows[-1].end - windows[-1].start <= length


# --- the planner: pure functions ---------------------------------------------------------------


def test_cuts_land_in_the_quiet_near_each_boundary_and_windows_overlap():
    x = recording(120.0)
    windows = cut_windows(x, 50 * SR)
    assert len(windows) == 3
    assert_well_cut(x, windows, 50 * SR)
    # The quietest stretch wins over a merely quiet one: a true silence at 39 s, and the
    # regular gaps made quiet-ish (not silent) around it, the cut takes the silence.
    y = x.copy()
    for t in np.arange(2.0, 120.0, GAP_EVERY):
        y[int(t * SR) : int((t + GAP) * SR)] = np.random.default_rng(1).normal(0, 0.02, int(GAP * SR))
    y[39 * SR : int(39.8 * SR)] = 0.0
    first = cut_windows(y, 50 * SR)[0]
    assert 39.0 < first.end_s < 39.8


def test_long_silence_and_flat_audio_cut_as_late_as_allowed():
    flat = np.full(120 * SR, 0.1, dtype=np.float32)  # no quieter place anywhere: cut at the longest end
    windows = cut_windows(flat, 50 * SR)
    assert 49.5 <= windows[0].end_s <= 50.0
    assert all(w.end - w.start <= 50 * SR for w in windows)


def test_the_reserve_grows_with_the_context_and_windows_fill_what_is_left():
    assert reasoning_reserve(Sampling(), 16384) == 4096
    assert reasoning_reserve(Sampling(), 65536) == MAX_RESERVE_TOKENS
    assert reasoning_reserve(Sampling(), 8192) == 3072  # never under what one request needs
    assert reasoning_reserve(Sampling(max_tokens=64), 65536) == 64
    for mml, sampling in ((16384, Sampling()), (4096, Sampling(max_tokens=512)), (1024, Sampling(max_tokens=64))):
        n = longest_window(Audio("x", np.zeros(1)), sampling, mml)
        used = Audio("w", np.zeros(n, dtype=np.float32)).prompt_tokens
        more = Audio("w", np.zeros(n + 25 * SR, dtype=np.float32)).prompt_tokens
        room = mml - reasoning_reserve(sampling, mml) - WINDOW_TEXT_TOKENS
        assert used <= room < more, (mml, n)


def test_audio_that_cannot_be_windowed_says_what_to_change():
    x = Audio("talk.wav", recording(120.0))
    with pytest.raises(AudioError) as e:
        plan(Request((x,), "Q"), 2048, Windowing())
    msg = e.value.message
    assert msg.startswith("talk.wav: 2m00s is too long for one request") and "3072-token reasoning reserve" in msg
    need = int(re.search(r"--max-model-len to at least (\d+)", msg).group(1))
    assert len(plan(Request((x,), "Q"), need, Windowing())) > 1  # what it said to do works
    assert msg.endswith(", or --max-tokens 1573 or less")  # 2048 less the question and one 25 s chunk
    assert len(plan(Request((x,), "Q", sampling=Sampling(max_tokens=1573)), 2048, Windowing())) > 1


def test_plan_keeps_one_request_when_it_fits_and_today_s_refusal_with_no_window():
    short = Audio("short.wav", recording(30.0))
    long = Audio("long.wav", recording(120.0))
    assert plan(Request((short,), "Q", sampling=Sampling(max_tokens=64)), 1024, Windowing()) is None
    assert plan(Request((long,), "Q"), None, Windowing()) is None  # context unknown: the server decides
    with pytest.raises(AudioError) as off:
        plan(Request((long,), "Q", sampling=Sampling(max_tokens=64)), 1024, Windowing(enabled=False))
    with pytest.raises(AudioError) as today:
        generation_room([long], Sampling(max_tokens=64), 1024)
    assert off.value.message == today.value.message and "raise --max-model-len" in off.value.message
    with pytest.raises(AudioError):  # several files are never windowed
        plan(Request((long, short), "Q", sampling=Sampling(max_tokens=64)), 1024, Windowing())
    chosen = plan(Request((long,), "Q"), None, Windowing(seconds=40.0))
    assert chosen and all(w.end - w.start <= 40 * SR for w in chosen)
    assert plan(Request((short,), "Q"), None, Windowing(seconds=40.0)) is None
    too_long = r"--window 5m00s does not fit max model length 1024 .* --window 50\.0s or less"
    with pytest.raises(AudioError, match=too_long):
        plan(Request((long,), "Q", sampling=Sampling(max_tokens=64)), 1024, Windowing(seconds=300.0))


def test_window_options():
    forms = ("20m", "1h30m", "90", "90s", "1:30", "1:30:00", "1.5h", "500ms")
    assert [Windowing.from_options(t, False).seconds for t in forms[:-1]] == [1200, 5400, 90, 90, 90, 5400, 5400]
    assert [parse_duration(t, "--window", "20m") for t in forms] == [1200, 5400, 90, 90, 90, 5400, 5400, 0.5]
    for bad in ("", "abc", "5x", "1:2:3:4", "5mm", "1.2.3"):
        with pytest.raises(UserError, match=r"--window '.*': not a duration \(e\.g\. 20m, 1h30m"):
            Windowing.from_options(bad, False)
    with pytest.raises(UserError, match="at least 10s"):
        Windowing.from_options("5s", False)
    with pytest.raises(UserError, match="not both"):
        Windowing.from_options("20m", True)
    assert Windowing.from_options(None, False).as_dict() == {}  # batch keys of earlier runs still match


def test_prompts_say_where_each_part_is_and_label_every_answer():
    x = recording(120.0)
    windows = cut_windows(x, 50 * SR)
    q = window_question("Who speaks?", windows, 1, 120.0)
    assert q.startswith(f"This audio is part 2 of 3 of a longer recording, from {clock(windows[1].start_s, 120)}-")
    assert q.endswith("of a 2:00 recording. Answer from this part alone.\n\nWho speaks?")
    assert clock(3725.2, 7200) == "1:02:05" and clock(65, 120) == "1:05"
    text = reduce_question("Who speaks?", windows, ["Ann.", "", "Bob."], 120.0)
    for i, (w, a) in enumerate(zip(windows, ["Ann.", "(no answer)", "Bob."])):
        assert f"Part {i + 1} ({clock(w.start_s, 120)}-{clock(w.end_s, 120)}):\n{a}" in text
    assert "Who speaks?" in text and "3 overlapping parts" in text


# --- map and reduce against a scripted server ---------------------------------------------------

PART = re.compile(r"This audio is part (\d+) of (\d+) of a longer recording, from (\S+)-(\S+) of a")


class Scripted(ScriptedBase):
    """A window's request is answered ``answer for part N`` after a short wait (so they
    overlap: in flight counts the most at once); the combining request ``the whole story``.
    ``hold`` keeps window requests until set; ``fail_part`` answers that part with a 400,
    ``flaky_part`` with a 500 the first time; ``cut_part`` stops that part at the length limit."""

    lock: threading.Lock
    in_flight = 0
    most = 0
    hold: threading.Event
    fail_part = 0
    flaky_part = 0
    cut_part = 0
    short_delay = 0.0  # seconds a file that fits one request waits for its answer

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            return reply_json(self, {"tokens": [7]})
        cls = type(self)
        content = body["messages"][0]["content"]
        text = content[0]["text"]
        audio = [p for p in content if p["type"] == "input_audio"]
        with cls.lock:
            cls.asked.append(body)
            cls.in_flight += 1
            cls.most = max(cls.most, cls.in_flight)
        try:
            if audio and not PART.match(text):  # a file that fits one request
                cls.hold.wait(60)
                time.sleep(cls.short_delay)
                pieces, usage = [{"content": "a short answer"}], 0
            elif audio:
                part = int(PART.match(text).group(1))
                cls.hold.wait(60)
                time.sleep(0.3)
                if part == cls.fail_part:
                    return reply_json(self, {"error": {"message": "bad part"}}, status=400)
                if part == cls.flaky_part:
                    cls.flaky_part = 0
                    return reply_json(self, {"error": {"message": "busy"}}, status=500)
                if part == cls.cut_part:
                    pieces = [{"reasoning": f"listening {part} and on and"}]
                    return reply_stream(self, pieces, "length", {"prompt_tokens": 100, "completion_tokens": 64})
                pieces, usage = [{"reasoning": f"listening {part}"}, {"content": f"answer for part {part}"}], part
            else:
                pieces, usage = [{"reasoning": "combining"}, {"content": "the whole story"}], 9
        finally:
            with cls.lock:
                cls.in_flight -= 1
        reply_stream(self, pieces, "stop", {"prompt_tokens": 100 * usage, "completion_tokens": 10 + usage})


@pytest.fixture
def scripted():
    handler = type("H", (Scripted,), {"asked": [], "lock": threading.Lock(), "hold": threading.Event()})
    handler.hold.set()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    handler.hold.set()
    httpd.shutdown()


def reduce_requests(handler) -> list[str]:
    return [
        b["messages"][0]["content"][0]["text"]
        for b in handler.asked
        if not any(p["type"] == "input_audio" for p in b["messages"][0]["content"])
    ]


def test_ask_maps_windows_at_once_then_reduces_with_every_answer_and_range(scripted, tmp_path):
    handler, url = scripted
    x = recording(120.0)
    path = write_wav(tmp_path / "long.wav", x)
    result = runner.invoke(app, ["ask", "--server", url, str(path), "What happens?", "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    windows = record["windows"]
    # Server context 4096 less the 3072-token reserve holds two 25 s chunks: 50 s windows.
    assert len(windows) == 3 and handler.most == 3  # all windows in flight at once
    for w, nxt in zip(windows, windows[1:]):
        assert w["end"] - w["start"] <= 50.0 and 5.0 <= w["end"] - nxt["start"] <= 10.1
        assert is_silent_at(x, w["end"]) and is_silent_at(x, nxt["start"])
    assert [w["answer"] for w in windows] == [f"answer for part {i}" for i in (1, 2, 3)]
    assert [w["usage"]["completion_tokens"] for w in windows] == [11, 12, 13]
    assert all(w["finish_reason"] == "stop" for w in windows)
    # Each window was asked with its place, and sent only its own audio (25 s chunks).
    maps = [b for b in handler.asked if len(b["messages"][0]["content"]) > 1]
    for body in maps:
        text = body["messages"][0]["content"][0]["text"]
        part, n, a, b = PART.match(text).groups()
        w = windows[int(part) - 1]
        assert (n, a, b) == ("3", clock(w["start"], 120), clock(w["end"], 120)) and text.endswith("What happens?")
        assert len(body["messages"][0]["content"]) - 1 == int(np.ceil((w["end"] - w["start"]) / 25 - 1e-9))
    # One text-only request carries every answer with its time range, then the question's answer.
    (combined,) = reduce_requests(handler)
    for i, w in enumerate(windows):
        assert f"Part {i + 1} ({clock(w['start'], 120)}-{clock(w['end'], 120)}):\nanswer for part {i + 1}" in combined
    assert "What happens?" in combined
    assert record["answer"] == "the whole story" and record["reasoning"] == "combining"
    assert record["usage"]["prompt_tokens"] == 100 * (1 + 2 + 3 + 9)
    assert record["usage"]["completion_tokens"] == 11 + 12 + 13 + 19

    streamed = runner.invoke(app, ["ask", "--server", url, str(path), "What happens?"])
    assert streamed.exit_code == 0, streamed.stderr
    assert streamed.stdout.strip() == "the whole story"
    assert "combining" in streamed.stderr and "3 windows + 1 combining request" in streamed.stderr


def test_a_failed_window_fails_the_file_with_its_reason_and_a_rerun_retries_it(scripted, tmp_path):
    handler, url = scripted
    handler.fail_part = 2
    write_wav(tmp_path / "long.wav", recording(120.0))
    out = tmp_path / "r.jsonl"
    args = ["batch", str(tmp_path / "long.wav"), "-p", "Q", "-s", url, "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert re.match(r"part 2 of 3 \(0:\d\d-1:\d\d\): .*server returned 400: bad part", rec["error"]), rec["error"]
    assert rec["windows"] is None and not reduce_requests(handler)
    handler.fail_part = 0
    retried = runner.invoke(app, [*args, "--retry-failed"])
    assert retried.exit_code == 0
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["error"] is None and rec["answer"] == "the whole story" and len(rec["windows"]) == 3
    # The progress counts windows too: one recording is minutes of work.
    assert "1/1 files" in retried.stderr and "3/3 windows" in retried.stderr, retried.stderr


def test_a_window_cut_at_the_limit_makes_the_recording_cut_off(scripted, tmp_path):
    handler, url = scripted
    handler.cut_part = 2
    path = write_wav(tmp_path / "long.wav", recording(120.0))
    out = tmp_path / "r.csv"
    result = runner.invoke(app, ["batch", str(path), "-p", "Q", "-s", url, "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert "cut off" in result.stderr and "1 answer(s) stopped at the length limit" in result.stderr
    (row,) = list(csv.DictReader(out.open(newline="")))
    assert (row["finish_reason"], row["windows"]) == ("length", "3")
    assert json.loads(row["warnings"]) == [
        "1 of 3 windows were cut off at the length limit (their answers may be missing)"
    ]
    asked = runner.invoke(app, ["ask", "-s", url, "--max-tokens", "64", "--window", "50s", str(path), "Q"])
    assert asked.exit_code == 0, asked.stderr
    assert "1 of 3 windows were cut off at the length limit (64 tokens per request" in asked.stderr
    record = json.loads(runner.invoke(app, ["ask", "-s", url, str(path), "Q", "--json"]).stdout)
    assert (
        record["finish_reason"] == "length" and record["warnings"] and record["windows"][1]["finish_reason"] == "length"
    )


def test_ask_retries_a_window_that_failed_once(scripted, tmp_path):
    handler, url = scripted
    handler.flaky_part = 2
    path = write_wav(tmp_path / "long.wav", recording(120.0))
    result = runner.invoke(app, ["ask", "-s", url, str(path), "Q", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["windows"][1]["answer"] == "answer for part 2"
    assert handler.flaky_part == 0  # it did fail once
    handler.fail_part = 2  # a failure a server repeats (400) is not retried: the recording fails
    failed = runner.invoke(app, ["ask", "-s", url, str(path), "Q"])
    assert failed.exit_code == 1 and "part 2 of 3" in failed.stderr and "bad part" in failed.stderr


def test_a_batch_holds_no_more_decoded_audio_than_its_room(scripted, tmp_path):
    """Long recordings (up to ~0.9 GiB decoded each) are not all decoded at once: a file waits
    for room before it is decoded; one larger than the whole room still goes, alone."""
    import asyncio

    from stepaudio_cli.audio import header_length
    from stepaudio_cli.batch import execute
    from stepaudio_cli.batch_job import BatchJob
    from stepaudio_cli.defaults import DECODED_AUDIO_BYTES
    from stepaudio_cli.engines import EngineSettings
    from stepaudio_cli.store import Store

    handler, url = scripted
    handler.short_delay = 0.3  # each answer takes a while: files overlap when room lets them
    folder = tmp_path / "in"
    folder.mkdir()
    files = [write_wav(folder / f"{i}.wav", recording(1.0, seed=i)) for i in range(4)]
    decoding = header_length(files[0], "0.wav").decode_bytes  # the source as float32 + the result
    held = 4 * 16000  # once decoded: one second of float32 at 16 kHz

    def most_at_once(room: int) -> int:
        handler.most = 0
        store = Store(tmp_path / f"{room}.jsonl")
        store.open(files)
        try:
            job = BatchJob(prompt="Q", concurrency=4, audio_bytes=room)
            summary = asyncio.run(execute(EngineSettings(servers=(url,)), job, store, files))
        finally:
            store.close()
        assert summary.answered == 4 and not summary.failed
        return handler.most

    assert most_at_once(decoding) == 1  # room for decoding one file: one at a time
    assert most_at_once(decoding + held) == 2  # one decoding while another's audio is held
    assert most_at_once(decoding // 2) == 1  # a file larger than the room: alone
    assert most_at_once(DECODED_AUDIO_BYTES) == 4  # 4 GiB: every file of the batch at once


def test_batch_killed_mid_map_reruns_to_one_record_per_file(scripted, tmp_path):
    handler, url = scripted
    d = tmp_path / "in"
    d.mkdir()
    write_wav(d / "a-short.wav", recording(20.0, seed=1))
    write_wav(d / "b-long.wav", recording(120.0, seed=2))
    out = tmp_path / "r.jsonl"
    args = [str(d), "-p", "Q", "-s", url, "-o", str(out)]
    handler.hold.clear()  # windows wait; the short file's one request does too
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", "batch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while handler.in_flight < 3 and time.monotonic() < deadline:  # the long file's windows are in flight
            time.sleep(0.05)
        assert handler.in_flight >= 3
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    handler.hold.set()
    assert not out.exists() or out.read_text() == ""  # nothing half-done was written
    result = runner.invoke(app, ["batch", *args])
    assert result.exit_code == 0, result.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(r["file"]).name for r in recs) == ["a-short.wav", "b-long.wav"]
    by_name = {Path(r["file"]).name: r for r in recs}
    assert by_name["a-short.wav"]["windows"] is None
    assert len(by_name["b-long.wav"]["windows"]) == 3 and by_name["b-long.wav"]["answer"] == "the whole story"
    again = runner.invoke(app, ["batch", *args])  # done: nothing asked again, still one record per file
    assert again.exit_code == 0 and len(out.read_text().splitlines()) == 2


# --- the real engine: in-process ask, and batch against vLLM's server ---------------------------


@pytest.mark.engine
def test_ask_in_process_answers_a_long_recording_in_windows(scripted_ckpt, tmp_path):
    x = recording(120.0)
    path = write_wav(tmp_path / "long.wav", x)
    result = runner.invoke(
        app,
        [
            "ask",
            "-m",
            str(scripted_ckpt),
            "--max-model-len",
            "1024",
            "--max-tokens",
            "64",
            str(path),
            "Q",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    windows = record["windows"]
    assert len(windows) == 3  # 1024 less a 64-token reserve holds two 25 s chunks
    for w, nxt in zip(windows, windows[1:]):
        assert is_silent_at(x, w["end"]) and is_silent_at(x, nxt["start"]) and w["end"] - w["start"] <= 50
    assert all(w["answer"] == SCRIPT[1] for w in windows)
    assert record["answer"] == SCRIPT[1]  # the text-only combining request ran on the engine too
    assert record["usage"]["prompt_tokens"] > sum(w["usage"]["prompt_tokens"] for w in windows)
    assert record["usage"]["completion_tokens"] > sum(w["usage"]["completion_tokens"] for w in windows)


@pytest.mark.engine
def test_batch_against_a_server_answers_long_files_in_windows(vllm_server, tmp_path):
    write_wav(tmp_path / "long.wav", recording(120.0))
    out = tmp_path / "r.jsonl"
    args = ["batch", str(tmp_path / "long.wav"), "-p", "Q", "-s", vllm_server.url, "--api-key", "sekret"]
    args += ["-o", str(out), "--max-tokens", "64"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    # 4096 tokens less a 64-token reserve hold 12 chunks: --max-tokens sets how long windows are.
    assert rec["windows"] is None
    result = runner.invoke(app, [*args, "--window", "50s"])
    assert result.exit_code == 0, result.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    # --window shapes the answer: another question, whose record joins the first one's.
    assert [r["params"].get("window") for r in recs] == [None, 50.0] and recs[0]["windows"] is None
    rec = recs[1]
    assert len(rec["windows"]) == 3 and all(w["answer"] == SCRIPT[1] for w in rec["windows"])
    assert rec["answer"] == SCRIPT[1] and rec["error"] is None


@pytest.mark.engine
def test_the_combining_request_renders_the_same_with_no_audio_in_process_and_served(vllm_server, scripted_ckpt):
    """The reduce step is text only: the server's chat template and build_prompt agree on it."""
    import httpx
    from tokenizers import Tokenizer

    from stepaudio_cli.prompt import build_messages, build_prompt

    auth = {"Authorization": "Bearer sekret"}
    model = httpx.get(vllm_server.url + "/v1/models", headers=auth).json()["data"][0]["id"]
    text = reduce_question("Q?", cut_windows(recording(120.0), 50 * SR), ["a", "b", "c"], 120.0)
    served = httpx.post(
        vllm_server.url + "/tokenize",
        headers=auth,
        timeout=120,
        json={
            "model": model,
            "messages": build_messages(text, [], system="S"),
            "add_generation_prompt": False,
            "continue_final_message": True,
        },
    )
    assert served.status_code == 200, served.text
    prompt = build_prompt(text, [], system="S")
    assert prompt.endswith(f"<|BOT|>human\n{text}<|EOT|><|BOT|>assistant\n<think>\n") and "<audio_patch>" not in prompt
    ours = Tokenizer.from_file(str(scripted_ckpt / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
    assert served.json()["tokens"] == ours
