"""Resident engines: a `stepaudio serve` kept loaded for this user after `ask`/`batch` used it.

The registry is a private folder (``$XDG_RUNTIME_DIR/stepaudio``, else under the XDG state
folder; mode 0700, refused when another user owns it) with, per engine ``ID``:

- ``ID.json``: the entry (pid, address, settings, started), written by the server once it
  answers and removed by it as it stops; a reader that finds the pid gone cleans it up;
- ``ID.sock`` (vLLM's ``--uds``, mode 0600) or ``ID.key`` (the API key of a 127.0.0.1 port, 0600);
- ``ID.lock``: clients hold a shared flock on it while they use or wait for the engine (the
  kernel drops it when a client dies, kill -9 included); the server stops only after taking
  it exclusively, so no request is ever cut by an idle stop;
- ``ID.used``: its mtime is the last use, its text the keep-alive that use asked for;
- ``ID.start``: an exclusive flock held by the one client that starts the engine.

A resident engine's ID is a short hash of the engine-shaping settings (``IDENTITY_FIELDS``);
a `stepaudio serve` the user started on loopback registers as ``serve-PORT`` and serves every
`ask` for its model.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from stepaudio_cli.defaults import UDS_SCHEME
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import UserError

#: EngineSettings fields that shape the engine: one engine per distinct set. A field the
#: settings do not have (yet) counts as None, so adding one here is all it takes.
#: What makes two engines interchangeable: every engine-shaping setting, except the logits
#: processor (a resident engine never loads it: reasoning length runs as plain requests).
IDENTITY_FIELDS = tuple(name for name in EngineSettings.engine_fields() if name != "thinking_processor")
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux
StatusCallback = Callable[[str | None], None]


# --- keep-alive -----------------------------------------------------------------------------
def parse_keep_alive(text: str | float | int) -> float | None:
    """``5m``, ``90s``, ``1h``, ``300`` (seconds), ``0`` (any form of :func:`audio.parse_duration`)
    -> seconds; ``forever`` (or a negative duration, as ollama takes) -> None."""
    from stepaudio_cli.audio import parse_duration

    if str(text).strip().lower() in ("forever", "inf", "infinite"):
        return None
    seconds = parse_duration(text, "--keep-alive", "5m, 90s, 1h, 0, forever")
    return None if seconds < 0 else seconds


def describe_keep_alive(seconds: float | None) -> str:
    from stepaudio_cli.audio import format_duration

    return "forever" if seconds is None else format_duration(seconds)


# --- the registry folder ------------------------------------------------------------------------
def registry_dir() -> Path:
    """The user's private registry folder, made 0700; refused when it is not this user's."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        path = Path(runtime) / "stepaudio"
    else:
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        path = Path(state) / "stepaudio" / "run"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except OSError as e:
        raise UserError(f"{path}: cannot make the resident-engine folder ({e.strerror or e})") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UserError(f"{path}: not a folder of this user's; refusing to use it for resident engines")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def identity(settings) -> str:
    """A short name for the engine ``settings`` shape (``IDENTITY_FIELDS``)."""
    values = {name: getattr(settings, name, None) for name in IDENTITY_FIELDS}
    values["model"] = _absolute(str(values["model"]))
    values["gpus"] = os.environ.get("CUDA_VISIBLE_DEVICES")  # the engine keeps the GPUs it started on
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --- entries ------------------------------------------------------------------------------
@dataclass
class Entry:
    id: str
    pid: int
    model: str
    kind: str = "resident"  # or "serve": started by the user, on loopback
    uds: str | None = None
    url: str | None = None
    key_file: str | None = None
    settings: dict = field(default_factory=dict)
    started: float = 0.0
    log: str | None = None
    pid_started: str | None = None  # the process's start time (/proc): a reused pid is not ours

    @property
    def server_url(self) -> str:
        """The URL RemoteEngine takes: unix:/path/to.sock or http://127.0.0.1:PORT."""
        return UDS_SCHEME + self.uds if self.uds else str(self.url)

    def api_key(self) -> str | None:
        if not self.key_file:
            return None
        try:
            return Path(self.key_file).read_text().strip() or None
        except OSError:
            return None

    def alive(self) -> bool:
        if _proc_started(self.pid) != self.pid_started:
            return False
        return _connectable(self)

    def save(self) -> None:
        _write_private(registry_dir() / f"{self.id}.json", json.dumps(asdict(self), indent=1))

    def used(self) -> tuple[float, float | None]:
        """When it was last used and the keep-alive that use asked for."""
        path = registry_dir() / f"{self.id}.used"
        try:
            text, when = path.read_text().strip(), path.stat().st_mtime
        except OSError:
            return self.started, None
        return when, None if text in ("", "forever") else float(text)


def _proc_started(pid: int) -> str | None:
    """When process ``pid`` started (None when there is none, or only its zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if len(fields) < 20 or fields[0] in ("Z", "X") else fields[19]


def _connectable(entry: Entry) -> bool:
    try:
        if entry.uds:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(entry.uds)
        else:
            from urllib.parse import urlsplit

            parts = urlsplit(str(entry.url))
            with socket.create_connection((parts.hostname, parts.port or 80), timeout=2):
                pass
    except OSError:
        return False
    return True


def remove(entry_id: str) -> None:
    """Forget an engine: its entry, socket and key file."""
    folder = registry_dir()
    for suffix in (".json", ".sock", ".key"):
        with contextlib.suppress(FileNotFoundError):
            (folder / f"{entry_id}{suffix}").unlink()


def read_entries(clean: bool = True) -> list[Entry]:
    """Every live engine; entries whose process is gone are removed (``clean``)."""
    found = []
    for path in sorted(registry_dir().glob("*.json")):
        try:
            entry = Entry(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # half-written by someone else, or foreign: leave it
        if entry.alive():
            found.append(entry)
        elif clean and _proc_started(entry.pid) != entry.pid_started:
            remove(entry.id)
    return found


def _find(entry_id: str, model: str | None = None) -> Entry | None:
    entries = read_entries()
    exact = next((e for e in entries if e.id == entry_id), None)
    if exact or model is None:
        return exact
    return next((e for e in entries if e.kind == "serve" and _same_model(e.model, model)), None)


def _absolute(model: str) -> str:
    """A local model folder as an absolute path; a repo id as it is."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model.rstrip("/")


def _same_model(a: str, b: str) -> bool:
    return _absolute(a) == _absolute(b)


# --- locks ----------------------------------------------------------------------------------
def _lock(path: Path, how: int) -> int | None:
    """An flock on ``path`` (made 0600); None when ``how`` has LOCK_NB and it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the flock


def touch(entry_id: str, keep_alive: float | None) -> None:
    """Mark the engine used now; ``keep_alive`` is how long it stays after this use."""
    _write_private(registry_dir() / f"{entry_id}.used", "forever" if keep_alive is None else repr(keep_alive))


class IdleWatch:
    """The server's side: is the engine unused for longer than its last user asked?"""

    def __init__(self, entry_id: str, keep_alive: float | None, follow_clients: bool = True) -> None:
        self.id = entry_id
        self.keep_alive = keep_alive
        self.follow_clients = follow_clients  # a resident engine stays as long as its last user asked
        self._fd: int | None = None
        touch(entry_id, keep_alive)  # the idle clock starts when the engine is ready

    def idle(self) -> bool:
        """True when no client holds the engine and its keep-alive has run out; the
        exclusive lock is then held (until ``release``), so no client starts using it."""
        folder = registry_dir()
        fd = _lock(folder / f"{self.id}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False
        path = folder / f"{self.id}.used"
        try:
            text, when = path.read_text().strip(), path.stat().st_mtime
            keep = None if text == "forever" else float(text)
        except (OSError, ValueError):
            when, keep = time.time(), self.keep_alive
        if not self.follow_clients:
            keep = self.keep_alive
        if keep is not None and time.time() - when >= keep:
            self._fd = fd
            return True
        _unlock(fd)
        return False

    def release(self) -> None:
        _unlock(self._fd)
        self._fd = None


# --- the server's side: registering -------------------------------------------------------------
def private_address(entry_id: str, uds_supported: bool) -> tuple[str | None, int | None, str | None]:
    """(socket path, None, None) or (None, free 127.0.0.1 port, API key) for a resident engine."""
    sock = registry_dir() / f"{entry_id}.sock"
    if uds_supported and len(str(sock)) <= SOCKET_PATH_MAX:
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # a dead engine's
        return str(sock), None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return None, port, secrets.token_urlsafe(32)


def register(entry: Entry, api_key: str | None = None) -> Entry:
    """Publish a ready server (its socket made 0600, its key kept in a 0600 file)."""
    folder = registry_dir()
    if entry.uds:
        os.chmod(entry.uds, 0o600)
    if api_key:
        key_file = folder / f"{entry.id}.key"
        _write_private(key_file, api_key)
        entry = replace(entry, key_file=str(key_file))
    entry = replace(entry, pid=os.getpid(), pid_started=_proc_started(os.getpid()), started=time.time())
    entry.save()
    _forget_start(entry.id)
    return entry


# --- the client's side ----------------------------------------------------------------------
@dataclass
class Use:
    entry: Entry
    started_it: bool


def serve_command(settings, entry_id: str, keep_alive: float | None, log: Path) -> list[str]:
    """`stepaudio serve` for the resident engine ``settings`` describe."""
    cmd = [
        sys.executable,
        "-m",
        "stepaudio_cli",
        "serve",
        _absolute(settings.model),
        "--resident",
        entry_id,
        "--keep-alive",
        "forever" if keep_alive is None else repr(keep_alive),
        "--log-file",
        str(log),
    ]
    for name in IDENTITY_FIELDS:  # serve takes each engine setting as the option of that name
        value = getattr(settings, name)
        if name != "model" and value is not None:
            cmd += ["--" + name.replace("_", "-"), str(value)]
    return cmd


@contextlib.contextmanager
def use(settings, keep_alive: float | None, on_status: StatusCallback) -> Iterator[Entry]:
    """The resident engine for ``settings``, started if none runs, held (never idle-stopped)
    until the block ends; then it stays ``keep_alive`` seconds (None: forever)."""
    folder = registry_dir()
    entry_id = identity(settings)
    held = _Hold(_lock(folder / f"{entry_id}.lock", fcntl.LOCK_SH))  # waits while an idle stop finishes
    try:
        entry = _find(entry_id, settings.model) or _start(settings, entry_id, keep_alive, held, on_status)
        touch(entry.id, keep_alive)
        try:
            yield entry
        finally:
            touch(entry.id, keep_alive)
    finally:
        held.release()


class _Hold:
    """Our shared lock on an engine, which ``_alone`` may let go early."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        _unlock(self.fd)
        self.fd = None


def _start(settings, entry_id: str, keep_alive: float | None, held: _Hold, on_status: StatusCallback) -> Entry:
    folder = registry_dir()
    start_lock = _lock(folder / f"{entry_id}.start", fcntl.LOCK_EX | fcntl.LOCK_NB)
    if start_lock is None:  # another command starts it: wait for that one
        on_status(f"Waiting for another stepaudio to load {settings.model}")
        try:
            start_lock = _lock(folder / f"{entry_id}.start", fcntl.LOCK_EX)
        finally:
            on_status(None)
    try:
        entry = _find(entry_id)
        if entry:
            return entry
        starting = _starting(entry_id)  # a start whose command was interrupted while others waited
        if starting is None:
            remove(entry_id)  # a dead engine's leftovers
            _check_room(settings)
            starting = _spawn(settings, entry_id, keep_alive)
        on_status(f"Loading {settings.model} (it stays loaded {describe_keep_alive(keep_alive)} after use)")
        try:
            return _wait_ready(entry_id, starting, held, on_status)
        finally:
            on_status(None)
    finally:
        _unlock(start_lock)


def _starting(entry_id: str) -> dict | None:
    """The server being started for ``entry_id``, if its process still runs."""
    try:
        info = json.loads((registry_dir() / f"{entry_id}.starting").read_text())
        return info if _proc_started(info["pid"]) == info["pid_started"] else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _spawn(settings, entry_id: str, keep_alive: float | None) -> dict:
    from stepaudio_cli.vllm_log import engine_log_path, log_size

    log = engine_log_path(f"resident-{entry_id}.log")
    offset = log_size(log)
    env = {k: v for k, v in os.environ.items() if k != "STEPAUDIO_API_KEY"}
    if env.get("PYTHONPATH"):  # it runs from /, so that it pins no folder
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            serve_command(settings, entry_id, keep_alive, log),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd="/",
        )
    info = {"pid": proc.pid, "pid_started": _proc_started(proc.pid), "log": str(log), "offset": offset, "proc": proc}
    _write_private(registry_dir() / f"{entry_id}.starting", json.dumps({k: v for k, v in info.items() if k != "proc"}))
    return info


def _wait_ready(entry_id: str, starting: dict, held: _Hold, on_status: StatusCallback) -> Entry:
    """Wait until the server ``starting`` describes registers; on Ctrl-C stop it unless others wait."""
    proc: subprocess.Popen | None = starting.get("proc")
    try:
        while True:
            entry = _find(entry_id)
            if entry and entry.pid == starting["pid"]:
                return entry
            gone = proc.poll() is not None if proc else _proc_started(starting["pid"]) != starting["pid_started"]
            if gone:
                _forget_start(entry_id)
                reason = _start_error(Path(starting["log"]), starting["offset"])
                raise UserError(f"the resident engine did not start: {reason}", exit_code=1)
            time.sleep(0.25)
    except (KeyboardInterrupt, SystemExit):
        if _alone(held, entry_id):
            on_status("Stopping the engine")
            _terminate(starting["pid"])
            _forget_start(entry_id)
            if proc:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(60)
        raise


def _forget_start(entry_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (registry_dir() / f"{entry_id}.starting").unlink()


def _check_room(settings) -> None:
    """One line when resident engines with other settings leave this one no room on the GPUs."""
    from stepaudio_cli import gpus
    from stepaudio_cli.defaults import GPU_MEMORY_FRACTION

    others = read_entries()
    if not others or not gpus.count_cheap():
        return

    def fraction(e: Entry) -> float:
        return e.settings.get("gpu_memory_utilization") or GPU_MEMORY_FRACTION

    if sum(map(fraction, others)) + (settings.gpu_memory_utilization or GPU_MEMORY_FRACTION) > 1.0:
        holder = max(others, key=fraction)
        if holder.kind == "resident":
            how = f"`stepaudio stop {holder.model}`"
        else:
            how = f"stopping its `stepaudio serve` (pid {holder.pid})"
        raise UserError(
            f"the GPU is held by a resident engine for {holder.model} with other settings ({summary(holder)}); "
            f"free it with {how}",
            exit_code=1,
        )


def _alone(held: _Hold, entry_id: str) -> bool:
    """True when no other command holds or waits for this engine (our shared lock let go)."""
    held.release()
    fd = _lock(registry_dir() / f"{entry_id}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
    _unlock(fd)
    return fd is not None


def _start_error(log: Path, start: int) -> str:
    """Why serve failed to start: its `error:` line (it carries vLLM's diagnosis), else the log's end."""
    from stepaudio_cli.vllm_log import read_since

    lines = read_since(log, start).splitlines()
    errors = [ln.strip() for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")
    return f"{tail[-300:]} (log: {log})"


def _terminate(pid: int) -> None:
    """SIGTERM the server (serve stops vLLM's whole group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)


def stop(entry: Entry, timeout: float = 60.0) -> bool:
    """Stop a registered engine and wait for it to go; True when it went."""
    _terminate(entry.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _proc_started(entry.pid) != entry.pid_started:
            remove(entry.id)
            return True
        time.sleep(0.2)
    return False


# --- for ps, stop, doctor -------------------------------------------------------------------------
def summary(entry: Entry) -> str:
    """The settings that shape it, in a few words."""
    s = entry.settings
    parts = [f"context {s.get('max_model_len') or 'auto'}", f"tp {s.get('tensor_parallel_size') or 'auto'}"]
    for key, label in (
        ("pipeline_parallel_size", "pp"),
        ("quantization", ""),
        ("dtype", "dtype"),
        ("gpu_memory_utilization", "memory"),
        ("load_format", "load"),
    ):
        value = s.get(key)
        if value not in (None, "auto", 1, ""):
            parts.append(f"{label} {value}".strip())
    return ", ".join(parts)


def engine_pids(pid: int) -> set[int]:
    """``pid`` and every process under it (vLLM's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        if p not in found:
            found.add(p)
            todo += children.get(p, [])
    return found


def gpu_memory_mib(entries: list[Entry]) -> dict[str, int]:
    """GPU memory each engine's processes hold (nvidia-smi); empty when it cannot be told."""
    import shutil

    if not entries or not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used: dict[int, int] = {}
    for line in out.splitlines():
        with contextlib.suppress(ValueError):
            pid, mib = (int(x) for x in line.split(","))
            used[pid] = used.get(pid, 0) + mib
    return {e.id: sum(used.get(p, 0) for p in engine_pids(e.pid)) for e in entries}


@contextlib.contextmanager
def session(settings, keep_alive: float | None, on_status: StatusCallback) -> Iterator:
    """The settings a command runs with: as given (``--server``, or ``keep_alive`` 0: in-process,
    nothing left running), or pointing at the resident engine, held for the block."""
    if settings.remote or keep_alive == 0:
        yield settings
        return
    with use(settings, keep_alive, on_status) as entry:
        # The remote scheme limits the reasoning (--think-budget, --min-think); a resident engine
        # serves until its keep-alive ends, so no waiting for it to come back.
        yield replace(
            settings,
            servers=(entry.server_url,),
            api_key=entry.api_key(),
            served_model=None,
            thinking_processor=False,
            wait_server=0.0,
        )


def status_rows(entries: list[Entry]) -> list[dict[str, str]]:
    """What `ps` and `doctor` show of each engine."""
    from stepaudio_cli.audio import format_duration

    gpu = gpu_memory_mib(entries)
    rows = []
    for e in entries:
        fd = _lock(registry_dir() / f"{e.id}.lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        _unlock(fd)
        when, keep = e.used()
        if e.kind == "serve":
            keep = e.settings.get("keep_alive")
        idle = time.time() - when
        if fd is None:
            idle_for, stops_in = "in use", "-"
        else:
            idle_for = format_duration(idle)
            stops_in = "when stopped" if keep is None else format_duration(max(keep - idle, 0))
        rows.append(
            {
                "model": e.model,
                "settings": summary(e),
                "address": e.server_url,
                "pid": str(e.pid),
                "gpu": f"{gpu[e.id] / 1024:.1f} GiB" if gpu.get(e.id) else "-",
                "idle": idle_for,
                "stops": stops_in,
                "kind": e.kind,
            }
        )
    return rows


def select(model: str | None) -> list[Entry]:
    """The live engines serving ``model`` (all with None)."""
    entries = read_entries()
    return entries if model is None else [e for e in entries if _same_model(e.model, model)]
