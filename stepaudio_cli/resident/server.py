"""The resident engine's server process: ``python -P -m stepaudio_cli.resident.server``.

A client (:mod:`.client`) starts it with a :class:`Spec` on its standard input: the engine settings
as typed values, the keep-alive, how long it may sleep, and the engine's id and token. It reads
nothing else: not the user's command line, config file or ``STEPAUDIO_*`` variables. It listens on
a private address and registers as ready. Once unused for the keep-alive its last client asked
for, it sleeps (vLLM's sleep mode, where the GPU and host memory allow: :mod:`.sleep`) for up to
``sleep_for``, a client waking it as it comes; then, or where it cannot sleep, it stops, and
removes its entry as it stops.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.resident import registry

SPEC_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Spec:
    """What a resident server is started with (written by the client, read here)."""

    id: str
    token: str
    engine: EngineSettings  # its engine fields; the rest are defaults
    keep_alive: float | None  # seconds after its last use (None: forever)
    log: str  # where vLLM's log goes
    sleep_for: float | None = 0.0  # then asleep this long before it stops (0: never asleep; None: until stopped)

    def to_json(self) -> str:
        engine = {name: getattr(self.engine, name) for name in EngineSettings.engine_fields()}
        return json.dumps(
            {
                "id": self.id,
                "token": self.token,
                "engine": engine,
                "keep_alive": self.keep_alive,
                "log": self.log,
                "sleep_for": self.sleep_for,
            }
        )

    @staticmethod
    def from_json(text: str) -> Spec:
        data = json.loads(text)
        engine = data["engine"]
        unknown = set(engine) - set(EngineSettings.engine_fields())
        if unknown:
            raise ValueError(f"unknown engine settings {sorted(unknown)}")
        for key in ("keep_alive", "sleep_for"):
            value = data[key]
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"bad {key}")
        if not registry.ID_PATTERN.fullmatch(data["id"]) or not registry.TOKEN_PATTERN.fullmatch(data["token"]):
            raise ValueError("bad id or token")
        return Spec(
            data["id"], data["token"], EngineSettings(**engine), data["keep_alive"], str(data["log"]), data["sleep_for"]
        )


def private_address(entry_id: str, uds_supported: bool) -> tuple[str | None, int, str | None]:
    """(socket path, 0, None), or (None, a free 127.0.0.1 port, a random key): a 0600 Unix socket
    in the registry folder where this vLLM has ``--uds`` and the path fits, else loopback + key."""
    import secrets
    import socket

    sock = registry.path_of(entry_id, ".sock")
    if uds_supported and len(str(sock)) <= registry.SOCKET_PATH_MAX:
        sock.unlink(missing_ok=True)  # a dead engine's
        return str(sock), 0, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return None, port, secrets.token_urlsafe(32)


class Idle:
    """What an unused engine does. Once no client holds it and none used it (nor sent it a request)
    for the keep-alive its last client asked for, it sleeps (``control``: where it can) or stops;
    asleep, it notices a client's wake-up and is ready again, or stops once asleep ``sleep_for``.
    An engine the registry no longer lists (its folder removed, its entry replaced) stops: no
    client can find it again. Returning True (stop) keeps the exclusive lock, so no client takes
    the engine while it stops; :meth:`release` lets it go once the server is down."""

    def __init__(self, spec: Spec, entry: registry.Entry, control=None) -> None:
        import time

        self.spec = spec
        self.entry = entry
        self.control = control  # an EngineControl where the engine can sleep, else None
        self._fd: int | None = None
        registry.touch(spec.id, spec.keep_alive)  # the idle clock starts when the engine is ready
        # The last use seen: what counts if the record of it is gone (never "used just now").
        self._use = registry.LastUse(time.time(), spec.keep_alive)

    def __call__(self, running) -> bool:
        import time

        from stepaudio_cli.errors import EngineError

        listed = registry.as_written(self.spec.id)
        if listed is None or listed.pid != self.entry.pid or listed.token != self.entry.token:
            print("the registry no longer lists this engine (its folder or entry was removed): stopping", flush=True)
            return True
        fd = registry.lock(self.spec.id, ".lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return False  # a client holds it
        try:
            if self.entry.state == "asleep":
                if not self.control.is_sleeping():  # a client woke it
                    self._set("ready")
                    return False
                if self.spec.sleep_for is not None and time.time() - self.entry.since >= self.spec.sleep_for:
                    return self._stop(fd)
                return False
            use = self._use = registry.last_use(self.spec.id, self._use)
            quiet_for = min(running.activity.idle_for(), time.time() - use.when)
            if use.keep_alive is None or quiet_for < use.keep_alive:
                return False
            if self.control is not None and self.spec.sleep_for != 0 and self._fits_host_memory():
                self.control.sleep()
                self._set("asleep")
                return False
            return self._stop(fd)
        except EngineError as e:
            print(f"sleep mode failed, stopping instead: {e.message}", flush=True)
            return self._stop(fd)
        finally:
            if self._fd is None:
                registry.unlock(fd)

    def _fits_host_memory(self) -> bool:
        from stepaudio_cli.resident.sleep import HOST_MEMORY_MARGIN, host_memory_available, weights_bytes

        available = host_memory_available()
        needed = weights_bytes(self.spec.engine, Path(self.spec.engine.model)) * HOST_MEMORY_MARGIN
        return available is None or available >= needed

    def _set(self, state: str) -> None:
        import time

        self.entry = dataclasses.replace(self.entry, state=state, since=time.time())
        registry.save(self.entry)

    def _stop(self, fd: int) -> bool:
        registry.remove(self.spec.id)  # under the lock: no client finds it from now on
        self._fd = fd
        return True

    def release(self) -> None:
        registry.unlock(self._fd)
        self._fd = None


class ResidentServer:
    """The hooks of :func:`stepaudio_cli.serve.run` for one resident engine."""

    def __init__(self, spec: Spec, uds: str | None, port: int, key: str | None, sleep_mode: bool) -> None:
        import os

        self.spec, self.uds, self.port, self.key = spec, uds, port, key
        self.sleep_mode = sleep_mode
        self.pid = os.getpid()
        self.idle: Idle | None = None  # armed once ready

    def ready(self, running) -> None:
        import os
        import time

        from stepaudio_cli import processes

        if self.key:
            registry.write_key(self.spec.id, self.key)
        if self.uds:
            os.chmod(self.uds, 0o600)
        entry = registry.Entry(
            id=self.spec.id,
            kind="resident",
            state="ready",
            pid=self.pid,
            pid_started=processes.start_time(self.pid) or "0",
            model=self.spec.engine.model,
            settings=identity_settings(self.spec.engine) | {"sleep_for": self.spec.sleep_for if self.sleep_mode else 0},
            token=self.spec.token,
            uds=bool(self.uds),
            port=None if self.uds else self.port,
            keyed=bool(self.key),
            started=time.time(),
            since=time.time(),
        )
        registry.save(entry)
        control = None
        if self.sleep_mode:
            from stepaudio_cli.resident.sleep import EngineControl

            control = EngineControl(running.url, running.uds, running.api_key)
        self.idle = Idle(self.spec, entry, control)

    def should_stop(self, running) -> bool:
        return self.idle is not None and self.idle(running)

    def exit(self) -> None:
        entry = registry.find(self.spec.id)
        if entry is None or entry.pid == self.pid:
            registry.remove(self.spec.id)
        if self.idle:
            self.idle.release()


def serve(spec: Spec) -> int:
    """Run the resident engine ``spec`` describes until it is idle or stopped."""
    from stepaudio_cli.resident.sleep import can_sleep
    from stepaudio_cli.serve import ServeHooks, ServeOptions, run
    from stepaudio_cli.vllm_plugin.compat import api_server_has_uds

    uds, port, key = private_address(spec.id, api_server_has_uds())
    why_not = None if spec.sleep_for == 0 else can_sleep(spec.engine, Path(spec.engine.model))
    if spec.sleep_for != 0:
        print(f"sleep mode: {'on' if why_not is None else 'off, ' + why_not}", flush=True)
    sleep_mode = spec.sleep_for != 0 and why_not is None
    opts = ServeOptions(engine=spec.engine, host="127.0.0.1", port=port, api_key=key, uds=uds, sleep_mode=sleep_mode)
    server = ResidentServer(spec, uds, port, key, sleep_mode)
    hooks = ServeHooks(
        on_status=_log_status, on_ready=server.ready, should_stop=server.should_stop, on_exit=server.exit
    )
    return run(opts, hooks, log_path=Path(spec.log), passthrough=False, ready_timeout=1800.0)


def identity_settings(engine: EngineSettings) -> dict:
    """The engine-shaping settings an entry records (shown by `ps`, counted by the room check)."""
    return {f.name: getattr(engine, f.name) for f in dataclasses.fields(engine) if f.metadata.get("engine")}


def _log_status(text: str | None) -> None:
    if text:
        print(text, flush=True)


def main() -> None:
    from stepaudio_cli.errors import UserError

    try:
        spec = Spec.from_json(sys.stdin.read(SPEC_MAX_BYTES))
    except (ValueError, KeyError, TypeError) as e:
        print(f"error: the resident engine's start settings are not valid ({e})", flush=True)
        sys.exit(2)
    finally:
        sys.stdin.close()
    try:
        code = serve(spec)
    except UserError as e:
        print(f"error: {e.message}", flush=True)
        code = e.exit_code
    sys.exit(code)


if __name__ == "__main__":
    main()
