"""The processes around an engine, fast: real `stepaudio ask`/`serve` processes and the real resident
server, with a stand-in for vLLM's OpenAI server (tests/fake_vllm: vLLM's routes and counters, no
model). Starts shared, idle stops, a client's hold, failed and interrupted starts, and `serve
--keep-alive` counting requests from any client."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, SCRIPT, free_port, wait_until

from stepaudio_cli import processes
from stepaudio_cli.resident import registry

FAKE_VLLM = Path(__file__).resolve().parent / "fake_vllm"
REASONING, ANSWER = SCRIPT


@pytest.fixture
def env(own_registry, tmp_path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": f"{FAKE_VLLM}{os.pathsep}{ROOT}",
        "FAKE_VLLM_STARTS": str(tmp_path / "starts"),
    }


def stepaudio(args: list[str], env: dict, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env | extra,
    )


def ask(ckpt: Path, clip: Path, env: dict, keep: str = "10m", **extra) -> subprocess.Popen:
    return stepaudio(["ask", "-m", str(ckpt), "--keep-alive", keep, str(clip), "What?"], env, **extra)


def starts(env: dict) -> int:
    path = Path(env["FAKE_VLLM_STARTS"])
    return len(path.read_text().splitlines()) if path.exists() else 0


def gone(entry: registry.Entry) -> bool:
    return not entry.is_ours() and not processes.left_behind(registry.MARKER_ENV, entry.token, entry.pid_started)


def test_two_asks_at_once_share_one_start_and_it_stops_after_its_keep_alive(ckpt, clip, env):
    procs = [ask(ckpt, clip, env, keep="2s", FAKE_VLLM_DELAY="1") for _ in range(2)]
    errs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == ANSWER and REASONING in err
        errs.append(err)
    assert starts(env) == 1
    assert any(": loading the weights" in err for err in errs), errs  # the spinner names the start's step
    (entry,) = registry.read_entries()
    assert entry.state == "ready" and entry.socket_path.exists()
    assert wait_until(lambda: gone(entry)), "the engine outlived its keep-alive"
    assert not entry.socket_path.exists() and registry.read_entries() == []


def test_a_client_holding_the_engine_keeps_it_past_its_keep_alive(ckpt, clip, env):
    first = ask(ckpt, clip, env, keep="1s")
    assert first.communicate(timeout=120)[0].strip() == ANSWER
    (entry,) = registry.read_entries()
    held = registry.lock(entry.id, ".lock", fcntl.LOCK_SH)  # as a client does while it asks
    try:
        time.sleep(3)
        assert entry.is_ours(), "stopped while a client held it"
    finally:
        registry.unlock(held)
    assert wait_until(lambda: gone(entry)), "not stopped once the client let go"


def test_an_engine_the_registry_no_longer_lists_stops(ckpt, clip, env, own_registry):
    # Its last-use record gone: the keep-alive counts from the last use it saw, not from now.
    first = ask(ckpt, clip, env, keep="2s")
    assert first.communicate(timeout=120)[0].strip() == ANSWER
    (entry,) = registry.read_entries()
    registry.path_of(entry.id, ".used").unlink()
    assert wait_until(lambda: gone(entry)), "an engine without its last-use record never stopped"
    # Its whole folder removed (a temporary folder cleaned up): no client can find it, it stops.
    second = ask(ckpt, clip, env, keep="10m")
    assert second.communicate(timeout=120)[0].strip() == ANSWER
    (entry,) = registry.read_entries()
    shutil.rmtree(own_registry)
    assert wait_until(lambda: gone(entry)), "an engine no client can find kept running"


def test_a_failed_start_is_one_line_saying_why(ckpt, clip, env):
    proc = ask(ckpt, clip, env, FAKE_VLLM_FAIL="the KV cache needs 9 GiB")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the resident engine did not start: vLLM exited with code 1 while starting")
    assert "the KV cache needs 9 GiB" in last and "Traceback" not in err
    assert registry.read_entries() == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_only_client_while_it_starts_stops_the_engine(ckpt, clip, env, sig):
    proc = ask(ckpt, clip, env, FAKE_VLLM_DELAY="60")
    assert wait_until(lambda: starts(env) == 1 and len(registry.read_entries()) == 1), "vLLM never started"
    (entry,) = registry.read_entries()
    assert entry.state == "starting"
    listed = stepaudio(["ps"], env)
    assert "starting" in listed.communicate(timeout=60)[0]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    assert wait_until(lambda: gone(entry)), "the engine outlived the only client waiting for it"
    assert registry.read_entries() == []


def test_serve_keep_alive_counts_requests_from_any_client(ckpt, env):
    port = free_port()
    serve = stepaudio(["serve", str(ckpt), "--port", str(port), "--keep-alive", "3s"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: _healthy(url), 60), serve.stderr.read() if serve.poll() is not None else ""
        assert wait_until(lambda: len(registry.read_entries()) == 1), "the serve was not listed"
        (entry,) = registry.read_entries()
        assert entry.id == f"serve-{port}" and entry.kind == "serve"
        stop_all = stepaudio(["stop", "--all"], env)
        stop_all.communicate(timeout=60)
        deadline = time.monotonic() + 7  # requests, not stepaudio clients, keep it up past 3 s
        while time.monotonic() < deadline:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            assert httpx.post(url + "/v1/chat/completions", json=body, timeout=10).status_code == 200
            time.sleep(1)
        assert serve.poll() is None, "stopped while a client sent requests"
        assert serve.wait(30) == 0, "not stopped after its keep-alive without requests"
        assert registry.read_entries() == []
    finally:
        if serve.poll() is None:
            serve.terminate()
            serve.wait(30)


def test_serve_keyed_through_vllm_api_key_stops_when_idle_and_lends_its_key(ckpt, env):
    """A key vLLM reads itself (VLLM_API_KEY here; or --api-key after --) is the one serve's own
    requests use: it stops after its keep-alive (it asked /metrics without the key, was refused,
    and never stopped), and the registry holds the key for local clients."""
    port = free_port()
    serve = stepaudio(["serve", str(ckpt), "--port", str(port), "--keep-alive", "4s"], env, VLLM_API_KEY="k-env")
    try:
        assert wait_until(lambda: len(registry.read_entries()) == 1, 60), "the serve was not listed"
        (entry,) = registry.read_entries()
        assert entry.keyed and entry.api_key() == "k-env"
        assert serve.wait(30) == 0, "not stopped after its keep-alive"
    finally:
        if serve.poll() is None:
            serve.terminate()
            serve.wait(30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_idle_engine_sleeps_then_wakes_for_the_next_question_then_stops(ckpt, clip, env, tmp_path):
    gpu = {"CUDA_VISIBLE_DEVICES": "0", "FAKE_VLLM_SLEEPS": str(tmp_path / "sleeps")}  # sleep mode needs a GPU
    sleeps = tmp_path / "sleeps"
    first = stepaudio(["ask", "-m", str(ckpt), "--keep-alive", "1s", "--sleep-for", "4s", str(clip), "Q?"], env, **gpu)
    assert first.communicate(timeout=120)[0].strip() == ANSWER
    assert wait_until(lambda: [e.state for e in registry.read_entries()] == ["asleep"]), "it did not fall asleep"
    listed = stepaudio(["ps"], env, **gpu)
    assert "asleep" in listed.communicate(timeout=60)[0]
    again = ask(ckpt, clip, env, keep="1s", **gpu)  # wakes it: no second start
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and out.strip() == ANSWER, err
    assert starts(env) == 1 and sleeps.read_text().split() == ["sleep", "wake"]
    (entry,) = registry.read_entries()
    assert wait_until(lambda: gone(entry), 60), "it did not stop after sleeping --sleep-for"
    assert sleeps.read_text().split() == ["sleep", "wake", "sleep"]


def test_sleep_for_0_or_no_gpu_stops_instead(ckpt, clip, env, tmp_path):
    for extra in ({"CUDA_VISIBLE_DEVICES": "0"}, {}):
        args = ["ask", "-m", str(ckpt), "--keep-alive", "1s", str(clip), "Q?"]
        proc = stepaudio(args + (["--sleep-for", "0"] if extra else []), env, **extra)
        assert proc.communicate(timeout=120)[0].strip() == ANSWER
        (entry,) = registry.read_entries()
        assert wait_until(lambda entry=entry: gone(entry)), "it did not stop"


def test_stop_stops_an_engine_in_its_sleep(ckpt, clip, env):
    gpu = {"CUDA_VISIBLE_DEVICES": "0"}
    first = stepaudio(["ask", "-m", str(ckpt), "--keep-alive", "1s", "--sleep-for", "10m", str(clip), "Q?"], env, **gpu)
    assert first.communicate(timeout=120)[0].strip() == ANSWER
    assert wait_until(lambda: [e.state for e in registry.read_entries()] == ["asleep"]), "it did not fall asleep"
    (entry,) = registry.read_entries()
    stopped = stepaudio(["stop", "--all"], env, **gpu)
    _, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 0, err
    assert gone(entry) and registry.read_entries() == []


def test_the_start_step_is_read_from_vllms_log():
    from stepaudio_cli.vllm_log import loading_step

    log = [
        "INFO [api_utils.py:286] non-default args: {'compilation_config': {'mode': 'torch.compile'}}",
        "INFO [core.py:133] Initializing a V1 LLM engine (v0.26.0) with config: ... torch.compile ...",
        "INFO [gpu_model_runner.py:1] Starting to load model /tmp/r1...",
        "INFO [default_loader.py:501] Loading weights took 2.90 seconds",
        "INFO [backends.py:1] Directly load the compiled graph(s) for compile range (1, 8192) from the cache",
        "INFO [gpu_model_runner.py:2] Graph capturing finished in 2 secs",
        "INFO [core.py:402] init engine (profile, create kv cache, warmup model) took 22.6 s",
    ]
    steps = [loading_step("\n".join(log[: i + 1])) for i in range(len(log))]
    assert steps == [
        "reading the model's config and tokenizer",
        "starting the engine process",
        "loading the weights",
        "loading the weights",  # until vLLM says the model is loaded
        "loading the compiled model (compile cache hit)",
        "warming up",
        "starting the server",
    ]
