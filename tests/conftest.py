"""Shared fixtures: tiny checkpoints, generated audio, real servers on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from stepaudio_cli.tiny_checkpoint import build_checkpoint

# Several CPU engines run at once in the suite (a server, in-process engines); give each a
# small fixed KV cache instead of a fraction of the machine's memory.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SCRIPT = ("I hear a steady tone", "A beep.")
SR = 16_000
ROOT = Path(__file__).resolve().parent.parent


def tone(seconds: float, sr: int = SR, freq: float = 440.0, channels: int = 1, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def noise(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 0.2, int(seconds * sr))).astype(np.float32)


def write_wav(
    path: Path, data: np.ndarray, sr: int = SR, subtype: str | None = None, format: str | None = None
) -> Path:
    sf.write(str(path), data, sr, subtype=subtype, format=format)
    return path


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True)


def wait_until(condition, timeout: float = 30.0, every: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The console script, as users run it (`python -m` would put the current folder on the path).
STEPAUDIO = str(Path(sys.executable).with_name("stepaudio"))
#: Scripts a user keeps beside their audio, named like standard-library modules: a server started
#: among them must not import them (each one fails loudly if imported).
USER_SCRIPTS = ("timeit.py", "json.py", "typing.py")


def serve_command(ckpt: Path, port: int, max_model_len: int = 4096) -> list[str]:
    """`stepaudio serve` of ``ckpt`` on loopback ``port``, as a user would type it."""
    return [STEPAUDIO, "serve", str(ckpt), "--port", str(port), "--max-model-len", str(max_model_len)]


def scripts_folder(path: Path) -> Path:
    """A folder holding :data:`USER_SCRIPTS`."""
    path.mkdir(parents=True, exist_ok=True)
    for name in USER_SCRIPTS:
        (path / name).write_text(f"raise SystemExit('the user's {name} was imported')\n")
    return path


class ServerProcess:
    """A real server process on 127.0.0.1, stopped (with its children) at the end."""

    def __init__(self, cmd: list[str], port: int, log: Path, env: dict | None = None, cwd: Path | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.cwd = cwd
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
            cwd=cwd,
        )

    def wait_healthy(self, timeout: float = 180.0, path: str = "/health") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        self._log.flush()
        return self.log.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with _suppress():
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def reply_json(handler, obj, status: int = 200) -> None:
    """Answer an http.server request with a JSON body."""
    body = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture
def http_servers():
    """``start(handler_class) -> url``: an http.server on 127.0.0.1 in a thread, shut down after the test."""
    from http.server import ThreadingHTTPServer

    servers = []

    def start(handler) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for s in servers:
        s.shutdown()


def reply_stream(handler, deltas: list[dict], finish: str | None, usage: dict, model: str = "scripted") -> None:
    """Answer a chat request as an OpenAI stream: one chunk per delta, then usage, then [DONE]."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    for i, delta in enumerate(deltas):
        choice = {"index": 0, "delta": delta, "finish_reason": finish if i == len(deltas) - 1 else None}
        handler.wfile.write(b"data: " + json.dumps({"model": model, "choices": [choice]}).encode() + b"\n\n")
    handler.wfile.write(b"data: " + json.dumps({"model": model, "choices": [], "usage": usage}).encode() + b"\n\n")
    handler.wfile.write(b"data: [DONE]\n\n")


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return True


class LoopThread:
    """An event loop in a thread, so one in-process engine can serve a whole test module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    """Random tiny checkpoint."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt_random"), seed=0)


@pytest.fixture(scope="session")
def scripted_ckpt(tmp_path_factory) -> Path:
    """Deterministic checkpoint: reasoning 'I hear a steady tone', then '</think>', then 'A beep.'."""
    return build_checkpoint(tmp_path_factory.mktemp("ckpt_scripted"), seed=3, script=SCRIPT)


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """3 s stereo 44.1 kHz tone."""
    return write_wav(tmp_path_factory.mktemp("audio") / "clip.wav", tone(3.0, sr=44100, channels=2), sr=44100)


@pytest.fixture(scope="session")
def vllm_server(scripted_ckpt, tmp_path_factory):
    """vLLM's own OpenAI server on CPU with this project's plugin, template and parser, started
    from a folder of the user's scripts named like standard-library modules (:data:`USER_SCRIPTS`)."""
    port = free_port()
    cmd = serve_command(scripted_ckpt, port)
    folder = tmp_path_factory.mktemp("server")
    # The key from the environment, as users are told to pass it: it never shows in argv.
    server = ServerProcess(
        cmd,
        port,
        folder / "server.log",
        env={"STEPAUDIO_API_KEY": "sekret"},
        cwd=scripts_folder(folder / "scripts"),
    )
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


#: Where the whole session lives instead of the user's home (short: socket paths hold 108 bytes).
SESSION_HOME = Path(tempfile.mkdtemp(prefix="sa-"))


def pytest_configure(config):
    """Before any fixture or import of the code under test: the session has a home of its own, so
    nothing touches the real home, config, cache, registry or hub token; resident engines (the
    default path) register in the session's own runtime folder and are shared across tests."""
    # Ctrl-C tests send SIGINT to the commands they start: a pytest started in the background
    # (`cmd &` in a script) has SIGINT ignored, which its children would inherit and keep.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name, sub in (
        ("HOME", "home"),
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_STATE_HOME", "state"),
        ("XDG_DATA_HOME", "data"),
    ):
        (SESSION_HOME / sub).mkdir(exist_ok=True)
        os.environ[name] = str(SESSION_HOME / sub)
    (SESSION_HOME / "run").mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(SESSION_HOME / "run")
    os.environ["HF_HUB_OFFLINE"] = "1"
    for name in [n for n in os.environ if n.startswith(("STEPAUDIO_", "HF_TOKEN"))]:
        del os.environ[name]
    # A resident engine stays for 2 minutes after a test used it: the next tests with the same
    # settings reuse it; a suite of many checkpoints does not hold them all at once.
    os.environ["STEPAUDIO_KEEP_ALIVE"] = "2m"


def pytest_unconfigure(config):
    """Stop the resident engines the session started, then remove its home."""
    import shutil

    from stepaudio_cli.resident import client

    try:
        for entry in client.select(None):
            client.stop(entry, timeout=60)
    except Exception as e:  # noqa: BLE001 - the session is over; say what was left
        print(f"resident engines not stopped: {e}", file=sys.stderr)
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Each test has its own config, cache and state; the session's runtime folder (its resident
    engines) is shared."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("STEPAUDIO_SERVER", raising=False)
    monkeypatch.delenv("STEPAUDIO_API_KEY", raising=False)
    monkeypatch.delenv("STEPAUDIO_MODEL", raising=False)
    # vLLM's CPU platform sets VLLM_WORKER_MULTIPROC_METHOD=spawn in the process that imports it
    # (this one, for the in-process engine tests): a command a later test starts would inherit it
    # as if the user had set it, and our servers keep a user's value.
    monkeypatch.delenv("VLLM_WORKER_MULTIPROC_METHOD", raising=False)


@pytest.fixture
def own_registry(tmp_path_factory, monkeypatch) -> Path:
    """A runtime folder of the test's own (short path), for tests that look at the registry itself."""
    run = Path(tempfile.mkdtemp(prefix="sr-", dir=SESSION_HOME))
    run.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    return run
