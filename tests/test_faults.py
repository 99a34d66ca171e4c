"""Faults, with real parts: `stepaudio serve` processes on loopback (its watchdog and the
stand-in for vLLM's server, tests/fake_vllm: the client's side is under test, not the engine's)
killed with SIGKILL and restarted mid-batch, a hung server, a parent of `serve` killed, results
that cannot be written (/dev/full, a removed folder); an engine start without room for its KV
cache, on the real engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
from conftest import ROOT, SCRIPT, ServerProcess, free_port, serve_command, tone, write_wav
from typer.testing import CliRunner

from stepaudio_cli.cli import app
from stepaudio_cli.errors import StoreError, UserError
from stepaudio_cli.records import FIELDS
from stepaudio_cli.serve import port_holder
from stepaudio_cli.store import Store

REASONING, ANSWER = SCRIPT
runner = CliRunner()


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def audio_dir(root: Path, n: int) -> Path:
    root.mkdir()
    for i in range(n):
        write_wav(root / f"{i:02d}.wav", tone(1.0 + (i % 3), freq=200 + 10 * i))
    return root


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def alive(procs: list[psutil.Process]) -> list[int]:
    return [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"


class Servers:
    """`stepaudio serve` processes of the scripted checkpoint, by port, that tests kill and restart.
    Their vLLM is the stand-in, answering in 0.4 s (two chunks 0.2 s apart): a batch of 30 files
    at concurrency 2 takes several seconds, long enough to kill a server in the middle."""

    def __init__(self, ckpt: Path, tmp: Path) -> None:
        self.ckpt, self.tmp = ckpt, tmp
        self.procs: dict[int, ServerProcess] = {}
        self.env = {"PYTHONPATH": f"{FAKE_VLLM}{os.pathsep}{ROOT}", "FAKE_VLLM_CHUNK_S": "0.2"}

    def start(self, port: int | None = None) -> ServerProcess:
        port = port or free_port()
        log = self.tmp / f"serve-{port}-{len(self.procs)}.log"
        server = ServerProcess(serve_command(self.ckpt, port), port, log, env=self.env)
        self.procs[port] = server
        return server

    def live(self) -> ServerProcess:
        """A running server (started when none is)."""
        running = [s for s in self.procs.values() if s.proc.poll() is None]
        server = running[0] if running else self.start()
        server.wait_healthy()
        return server

    def kill_parent(self, server: ServerProcess) -> list[psutil.Process]:
        """SIGKILL to `stepaudio serve` alone (as the OOM killer or a closed terminal would):
        its vLLM process group is left without an owner. Returns that group."""
        family = psutil.Process(server.proc.pid).children(recursive=True)
        assert family, "vLLM runs as child processes"
        server.proc.kill()
        server.proc.wait(10)
        return family

    def stop_all(self) -> None:
        for server in self.procs.values():
            server.stop()  # SIGTERM to `serve`: it stops vLLM (or its watchdog does)
            holder = port_holder(server.port)
            if holder:  # should not happen; never leave a server behind for the next tests
                os.killpg(int(holder.split()[1]), signal.SIGKILL)


@pytest.fixture(scope="module")
def servers(scripted_ckpt, tmp_path_factory):
    pool = Servers(scripted_ckpt, tmp_path_factory.mktemp("servers"))
    yield pool
    pool.stop_all()


def test_serve_parent_killed_takes_vllm_with_it_and_batch_keeps_going_on_the_other_server(servers, tmp_path):
    a, b = servers.start(), servers.start()
    a.wait_healthy(), b.wait_healthy()
    files = audio_dir(tmp_path / "in", 30)
    out = tmp_path / "r.jsonl"
    args = [
        "batch",
        str(files),
        "-p",
        "Q",
        "-s",
        f"{a.url},{b.url}",
        "--concurrency",
        "2",
        "--seed",
        "1",
        "-o",
        str(out),
    ]
    proc = spawn(args, tmp_path / "batch.log")
    wait_for(lambda: lines(out) >= 4, 120, "the first results")
    family = servers.kill_parent(b)

    # The watchdog takes vLLM down with its parent: the port and the processes are freed.
    wait_for(
        lambda: port_free(b.port) and not alive(family), 60, f"port {b.port} and {[p.pid for p in family]} to be freed"
    )
    assert proc.wait(180) == 0, (tmp_path / "batch.log").read_text()
    recs = records(out)
    assert len(recs) == 30 and all((r["answer"], r["error"]) == (ANSWER, None) for r in recs)


def crash(server: ServerProcess) -> None:
    """vLLM dies at once (SIGKILL to its process group), as in a crash."""
    os.killpg(int(port_holder(server.port).split()[1]), signal.SIGKILL)
    wait_for(lambda: port_free(server.port), 30, "the port to be free")


def test_the_only_server_dying_pauses_the_batch_until_it_is_back_or_stops_it(servers, vllm_server, clip, tmp_path):
    a = servers.live()
    files = audio_dir(tmp_path / "in", 40)  # more than it answers before the crash, even on fast cores
    out = tmp_path / "r.jsonl"
    log = tmp_path / "batch.log"
    proc = spawn(["batch", str(files), "-p", "Q", "-s", a.url, "--concurrency", "2", "-o", str(out)], log)
    wait_for(lambda: lines(out) >= 4, 120, "the first results")
    crash(a)
    done_before = lines(out)
    # The progress says the batch waits; the server comes back on the same port.
    wait_for(lambda: b"waiting up to 10m" in log.read_bytes(), 60, "the batch to wait for the server")
    assert b"no answer from the server" in log.read_bytes()
    servers.start(a.port).wait_healthy()
    assert proc.wait(180) == 0, log.read_text()
    recs = records(out)
    assert done_before < 40 and len(recs) == 40
    assert all((r["answer"], r["error"]) == (ANSWER, None) for r in recs), [r["error"] for r in recs if r["error"]]

    # Gone for longer than --wait-server: the run stops; unanswered files get no record. An
    # `ask` streaming from the same server at that moment keeps what it showed.
    ask_err, ask_out = tmp_path / "ask.err", tmp_path / "ask.out"
    # --min-think holds </think> and <|EOT|> back: a long reasoning stream to cut.
    asking = subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", "ask", "-s", a.url, "--min-think", "3000", str(clip), "Q?"],
        stdout=ask_out.open("wb"),
        stderr=ask_err.open("wb"),
    )
    wait_for(lambda: REASONING.encode() in ask_err.read_bytes(), 120, "the reasoning")
    # The batch starts once the ask streams (on CI's 2 cores 20 files took 4.4 s: it must still be
    # running when the server dies).
    out2 = tmp_path / "r2.jsonl"
    common = [str(files), "-p", "Q", "--concurrency", "2", "-o", str(out2)]
    log = tmp_path / "batch2.log"
    proc = spawn(["batch", *common, "-s", a.url, "--wait-server", "3"], log)
    wait_for(lambda: lines(out2) >= 4, 120, "the first results")
    crash(a)  # vLLM dies, no goodbye

    assert asking.wait(60) == 1
    text = ask_err.read_text()
    shown, _, tail = text.rpartition("\n" + "error: ")
    assert REASONING in shown  # the reasoning stays on screen
    assert "dropped mid-stream" in tail and tail.count("\n") == 1 and "Traceback" not in text
    assert ask_out.read_text() == ""

    assert proc.wait(120) == 75, log.read_text()
    text = log.read_text()
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "no answer from the server" in errors[0], text
    assert "waited 3.0s; rerun the same command to continue" in errors[0]
    assert "Traceback" not in text and "not done" in text
    first = records(out2)
    assert 4 <= len(first) < 40 and all(r["error"] is None for r in first)  # nothing recorded as failed
    # The rerun (here on another server of the same model) continues with the rest.
    rerun = runner.invoke(app, ["batch", *common, "-s", vllm_server.url, "--api-key", "sekret"])
    assert rerun.exit_code == 0, rerun.stderr
    assert re.search(rf"already done\s+{len(first)}\b", rerun.stderr), rerun.stderr
    recs = records(out2)
    assert len(recs) == 40 and all((r["answer"], r["error"]) == (ANSWER, None) for r in recs)


# --- a hung server ---------------------------------------------------------------------------


def test_a_server_that_never_answers_is_one_line_for_ask(clip):
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        result = runner.invoke(app, ["ask", "-s", url, "--timeout", "2", str(clip), "Q?"])
    assert result.exit_code == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {url}: no answer from the server for 2s (hung? --timeout sets the limit)"
    )
    assert "Traceback" not in result.stderr


def test_requests_to_a_hung_server_are_retried_on_another(vllm_server, tmp_path):
    from test_cli_ask import Replay

    handler = type("H", (Replay,), {"mode": "hang"})
    hung = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    hung.daemon_threads = True
    threading.Thread(target=hung.serve_forever, daemon=True).start()
    try:
        files = audio_dir(tmp_path / "in", 6)
        out = tmp_path / "r.jsonl"
        hung_url = f"http://127.0.0.1:{hung.server_address[1]}"
        result = runner.invoke(
            app,
            [
                "batch",
                str(files),
                "-p",
                "Q",
                "-s",
                f"{hung_url},{vllm_server.url}",
                "--api-key",
                "sekret",
                "--timeout",
                "2",
                "--concurrency",
                "4",
                "-o",
                str(out),
            ],
        )
    finally:
        hung.shutdown()
    assert result.exit_code == 0, result.stderr
    assert f"{hung_url} left the pool (" in result.stderr
    recs = records(out)
    assert len(recs) == 6 and all(
        (r["answer"], r["error"], r["model"]) == (ANSWER, None, recs[0]["model"]) for r in recs
    )


# --- results that cannot be written ----------------------------------------------------------


def test_a_full_disk_stops_the_batch_with_one_line(vllm_server, tmp_path):
    files = audio_dir(tmp_path / "in", 3)
    full = tmp_path / "results.jsonl"
    full.symlink_to("/dev/full")  # every write: ENOSPC, through a real file descriptor
    result = runner.invoke(
        app, ["batch", str(files), "-p", "Q", "-s", vllm_server.url, "--api-key", "sekret", "-o", str(full)]
    )
    assert result.exit_code == 1
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: {full}: cannot write the results (No space left on device); the run stopped: "
        "fix it and rerun the same command to continue"
    ], result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_write_leaves_earlier_records_whole_and_resumable(tmp_path):
    path = tmp_path / "r.jsonl"
    store = Store(path)
    good = [dict.fromkeys(FIELDS) | {"file": f"{i}.wav", "key": str(i), "answer": "x" * 5000} for i in range(2)]
    for r in good:
        store.append(r)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, store._fd)  # the disk fills up under the open results file
        with pytest.raises(StoreError, match="No space left on device.*the 2 result"):
            store.append(dict(good[0], file="2.wav", key="2"))
    finally:
        os.close(full)
        store.close()
    assert Store(path).load() == good  # what was written stays valid; a rerun resumes from it


def test_a_removed_results_folder_stops_the_batch(vllm_server, tmp_path):
    files = audio_dir(tmp_path / "in", 30)
    out = tmp_path / "out" / "r.jsonl"
    log = tmp_path / "batch.log"
    proc = spawn(
        [
            "batch",
            str(files),
            "-p",
            "Q",
            "-s",
            vllm_server.url,
            "--api-key",
            "sekret",
            "--concurrency",
            "2",
            "-o",
            str(out),
        ],
        log,
    )
    wait_for(lambda: lines(out) >= 3, 120, "the first results")
    shutil.rmtree(out.parent)
    assert proc.wait(60) == 1, log.read_text()
    text = log.read_text()
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"{out}: cannot write the results" in errors[0] and "removed" in errors[0], text
    assert "Traceback" not in text


# --- a model that does not fit ------------------------------------------------------------


def test_an_in_process_start_without_room_for_the_kv_cache_says_what_to_change(ckpt, clip):
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "0"}  # the CPU backend's "no memory left for the cache"
    out = subprocess.run(
        [sys.executable, "-m", "stepaudio_cli", "ask", "-m", str(ckpt), str(clip), "Q?"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 1
    (line,) = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert "no memory is left for the KV cache once the weights are loaded: use --quantization fp8" in line
    assert "Traceback" not in out.stderr
    assert out.stdout == ""  # vLLM's own error log (it logs to stdout) went to the engine log


def test_serve_whose_vllm_fails_for_want_of_kv_cache_says_what_to_change(tmp_path):
    """serve's start-failure path with vLLM's own message: a child that raises what vLLM's KV
    check raises (its real function) and exits, as vLLM's server does."""
    from stepaudio_cli.serve import VllmServerProcess as Server

    child = (
        "from vllm.v1.core.kv_cache_utils import _check_enough_kv_cache_memory as check\n"
        "check(2**30, lambda: 2**31, 65536, lambda mem: 33616)\n"
    )
    server = Server([sys.executable, "-c", child], tmp_path / "serve.log", passthrough=False)
    try:
        with pytest.raises(UserError) as e:
            server.wait_ready(f"http://127.0.0.1:{free_port()}", timeout=120)
    finally:
        server.stop()
    assert e.value.message.startswith(
        "vLLM exited with code 1 while starting: the KV cache holds about 33,616 tokens, less than one request "
        "of --max-model-len 65,536: use --max-model-len 32768 or less, --quantization fp8, or more GPUs (-tp)"
    )
