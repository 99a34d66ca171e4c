"""The client's side of resident engines: find the engine for a command's settings, or start one
(a :class:`~.server.Spec` through a pipe), hold it while the command runs, and stop engines.

A resident engine's id is a short hash of the engine-shaping settings (:func:`identity`); a
`stepaudio serve` the user started on loopback (``serve-PORT``) also serves every `ask` for its
model. Only processes proven ours are ever signalled (:meth:`registry.Entry.is_ours`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from stepaudio_cli import processes
from stepaudio_cli.checkpoint import absolute_model, same_model
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import UserError
from stepaudio_cli.resident import registry
from stepaudio_cli.resident.registry import Entry

StatusCallback = Callable[[str | None], None]
#: The engine fields that make two resident engines interchangeable (every resident engine runs
#: the reasoning-length processor, so that one is not among them).
IDENTITY_FIELDS = tuple(name for name in EngineSettings.engine_fields() if name != "thinking_processor")


def identity(settings: EngineSettings) -> str:
    """A short name for the engine ``settings`` shape (:data:`IDENTITY_FIELDS`)."""
    values = {name: getattr(settings, name) for name in IDENTITY_FIELDS}
    values["model"] = absolute_model(settings.model)
    values["gpus"] = os.environ.get("CUDA_VISIBLE_DEVICES")  # the engine keeps the GPUs it started on
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- using an engine --------------------------------------------------------------------------
@contextlib.contextmanager
def use(
    settings: EngineSettings,
    keep_alive: float | None,
    on_status: StatusCallback,
    warn: registry.Warn | None = None,
    sleep_for: float | None = 0.0,
) -> Iterator[Entry]:
    """The engine for ``settings``, started if none runs (then it may sleep ``sleep_for`` once
    idle), woken if it sleeps, held (never idle-stopped) until the block ends; then it stays
    ``keep_alive`` seconds (None: forever)."""
    entry_id = identity(settings)
    held = _Hold(registry.lock(entry_id, ".lock", fcntl.LOCK_SH))  # waits while an idle stop finishes
    try:
        entry = _ready(entry_id, settings.model, warn) or _start(
            settings, entry_id, keep_alive, sleep_for, held, on_status
        )
        if entry.state == "asleep":
            _wake(entry, on_status)
        registry.touch(entry.id, keep_alive)
        try:
            yield entry
        finally:
            registry.touch(entry.id, keep_alive)
    finally:
        held.release()


def _ready(entry_id: str, model: str, warn: registry.Warn | None = None) -> Entry | None:
    """The engine ``entry_id`` (ready, or asleep), else a ready `stepaudio serve` of ``model`` on loopback."""
    entries = [e for e in registry.read_entries(warn) if e.state != "starting"]
    exact = next((e for e in entries if e.id == entry_id), None)
    return exact or next((e for e in entries if e.kind == "serve" and same_model(e.model, model)), None)


def _wake(entry: Entry, on_status: StatusCallback) -> None:
    """Wake a sleeping engine (we hold it: it cannot go back to sleep meanwhile)."""
    from stepaudio_cli.resident.sleep import EngineControl

    on_status(f"Waking {entry.model}")
    socket = entry.socket_path
    control = EngineControl(entry.server_url, str(socket) if socket else None, entry.api_key())
    try:
        control.wake()
    finally:
        control.close()
        on_status(None)


class _Hold:
    """Our shared lock on an engine, which :func:`_alone` may let go early."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def release(self) -> None:
        registry.unlock(self.fd)
        self.fd = None


def _start(
    settings: EngineSettings, entry_id: str, keep_alive: float | None, sleep_for: float | None, held: _Hold, on_status
) -> Entry:
    start_lock = registry.lock(entry_id, ".start", fcntl.LOCK_EX | fcntl.LOCK_NB)
    if start_lock is None:  # another command starts it: wait for that one
        on_status(f"Waiting for another stepaudio to load {settings.model}")
        try:
            start_lock = registry.lock(entry_id, ".start", fcntl.LOCK_EX)
        finally:
            on_status(None)
    try:
        entry = registry.find(entry_id)
        if entry and entry.state != "starting":
            return entry
        log = None
        if entry is None:  # else a start whose command was interrupted while others waited: wait for it
            registry.remove(entry_id)  # a dead engine's leftovers
            check_room(settings)
            entry, log = _spawn(settings, entry_id, keep_alive, sleep_for)
        loading = f"Loading {settings.model} (it stays loaded {describe_keep_alive(keep_alive)} after use)"
        on_status(loading)
        try:
            return _wait_ready(entry, log, held, on_status, loading)
        finally:
            on_status(None)
    finally:
        registry.unlock(start_lock)


def _spawn(
    settings: EngineSettings, entry_id: str, keep_alive: float | None, sleep_for: float | None
) -> tuple[Entry, tuple[Path, int]]:
    """Start the resident server for ``settings``; its entry (``starting``) is visible at once."""
    from stepaudio_cli.resident.server import Spec, identity_settings
    from stepaudio_cli.vllm_log import engine_log_path, log_size

    log = engine_log_path(f"resident-{entry_id}.log")
    offset = log_size(log)
    token = secrets.token_hex(16)
    engine = replace(settings, model=absolute_model(settings.model))
    spec = Spec(id=entry_id, token=token, engine=engine, keep_alive=keep_alive, log=str(log), sleep_for=sleep_for)
    # Nothing of the user's settings travels but the spec: no STEPAUDIO_* variable, no key.
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("STEPAUDIO_") or k == "STEPAUDIO_DEBUG") and k != "VLLM_API_KEY"
    }
    env[registry.MARKER_ENV] = token
    if env.get("PYTHONPATH"):  # it runs from /, so that it pins no folder
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "stepaudio_cli.resident.server"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd="/",
        )
    entry = Entry(
        id=entry_id,
        kind="resident",
        state="starting",
        pid=proc.pid,
        pid_started=processes.start_time(proc.pid) or "0",
        model=engine.model,
        settings=identity_settings(engine),
        token=token,
        started=time.time(),
    )
    registry.save(entry)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(spec.to_json().encode())
        proc.stdin.close()
    return entry, (log, offset)


def _wait_ready(
    starting: Entry, log: tuple[Path, int] | None, held: _Hold, on_status: StatusCallback, loading: str = "Loading"
) -> Entry:
    """Wait until the server ``starting`` names is ready, ``on_status`` naming the step its start
    is in (from its log). Ctrl-C or SIGTERM stop it, unless another command waits for it too."""
    from stepaudio_cli.vllm_log import loading_step, read_since

    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        while True:
            step = loading_step(read_since(*log)) if log else None
            if step:
                on_status(f"{loading}: {step}")
            entry = registry.find(starting.id)
            if entry and entry.pid == starting.pid and entry.state != "starting":
                return entry
            if not starting.is_ours():  # it exited
                registry.remove(starting.id)
                reason = _start_error(*log) if log else "it exited while starting"
                raise UserError(f"the resident engine did not start: {reason}", exit_code=1)
            time.sleep(0.25)
    except (KeyboardInterrupt, Terminated):
        if _alone(held, starting.id):
            on_status("Stopping the engine")
            stop(starting)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM while waiting for an engine to start: the command ends as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _alone(held: _Hold, entry_id: str) -> bool:
    """True when no other command holds or waits for this engine (our shared lock let go)."""
    held.release()
    return not registry.in_use(entry_id)


def _start_error(log: Path, start: int) -> str:
    """Why the server failed to start: its `error:` line (it carries vLLM's diagnosis), else the log's end."""
    from stepaudio_cli.vllm_log import read_since

    lines = read_since(log, start).splitlines()
    errors = [ln.strip() for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "(no output)")
    return f"{tail[-300:]} (log: {log})"


def check_room(settings: EngineSettings, warn: registry.Warn | None = None) -> None:
    """One line when engines kept loaded leave the engine ``settings`` describe no room on the GPUs."""
    from stepaudio_cli import gpus
    from stepaudio_cli.defaults import GPU_MEMORY_FRACTION
    from stepaudio_cli.resident.status import memory_fraction

    others = [e for e in registry.read_entries(warn) if e.state != "asleep"]  # asleep: its GPU memory is free
    if not others or not gpus.count_cheap():
        return
    if sum(map(memory_fraction, others)) + (settings.gpu_memory_utilization or GPU_MEMORY_FRACTION) > 1.0:
        raise UserError(f"the GPU is held by {holder_words(max(others, key=memory_fraction))}", exit_code=1)


def holder_words(holder: Entry) -> str:
    """ "a resident engine for M; free it with `stepaudio stop ID`" (or its serve's pid)."""
    if holder.kind == "resident":
        return f"a resident engine for {holder.model}; free it with `stepaudio stop {holder.id}`"
    return f"`stepaudio serve` (pid {holder.pid}) for {holder.model}; stop it to free the GPU"


# --- stopping -----------------------------------------------------------------------------------
def stop(entry: Entry, timeout: float = 60.0) -> bool:
    """Stop an engine proven ours and wait for it to go; True when it went (also when it was gone
    already: its files are then removed, and nothing is signalled)."""
    if entry.is_ours():
        processes.terminate(entry.pid)
        deadline = time.monotonic() + timeout
        while entry.is_ours():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
    for pid in entry.left_behind():  # its vLLM, when the server was killed with -9 (marked, started after it)
        processes.terminate(pid)
    current = registry.find(entry.id)
    if current is None or current.pid == entry.pid:
        registry.remove(entry.id)
    return True


def select(target: str | None, warn: registry.Warn | None = None) -> list[Entry]:
    """The engines `stop` stops: every resident engine (``None``), the engine whose id is
    ``target``, or the resident engines of the model ``target``. A `stepaudio serve` the user
    started is stopped only when named by its id."""
    entries = registry.read_entries(warn)
    if target is None:
        return [e for e in entries if e.kind == "resident"]
    by_id = [e for e in entries if e.id == target]
    return by_id or [e for e in entries if e.kind == "resident" and same_model(e.model, target)]


# --- keep-alive ---------------------------------------------------------------------------------
def parse_keep_alive(text: str | float | int, flag: str = "--keep-alive") -> float | None:
    """``5m``, ``90s``, ``1h``, ``300`` (seconds), ``0`` (any form of :func:`durations.parse_duration`)
    -> seconds; ``forever`` (or a negative duration, as ollama takes) -> None."""
    from stepaudio_cli.durations import parse_duration

    if str(text).strip().lower() in ("forever", "inf", "infinite"):
        return None
    seconds = parse_duration(text, flag, "5m, 90s, 1h, 0, forever")
    return None if seconds < 0 else seconds


def describe_keep_alive(seconds: float | None) -> str:
    from stepaudio_cli.durations import format_duration

    return "forever" if seconds is None else format_duration(seconds)
