"""The registry of engines kept loaded: a private folder and the strict reading of what is in it.

The folder is ``$XDG_RUNTIME_DIR/stepaudio`` (else ``$XDG_STATE_HOME/stepaudio/run``), mode 0700,
refused when another user owns it. Per engine ``ID`` (12 hex digits for a resident engine,
``serve-PORT`` for a `stepaudio serve` the user started on loopback):

- ``ID.json``: the :class:`Entry`, written when a start begins (state ``starting``), again once
  the server answers (``ready``) and as it sleeps and wakes (``asleep``), removed when it stops;
- ``ID.sock`` (vLLM's ``--uds``, 0600) or ``ID.key`` (the key of a 127.0.0.1 port, 0600);
- ``ID.lock``: clients hold it shared while they use or wait for the engine; the server stops
  only after taking it exclusively, so no request is cut by an idle stop;
- ``ID.used``: its mtime is the last use by a client, its text the keep-alive that use asked for;
- ``ID.start``: held exclusively by the one client that starts the engine.

Every file is opened without following symlinks, and read only when it is a regular file of this
user, small, and of the expected shape; anything else is skipped with one warning. Every path is
built from a validated id, so no entry can make us write or delete outside the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from stepaudio_cli import processes
from stepaudio_cli.defaults import UDS_SCHEME
from stepaudio_cli.errors import UserError

ID_PATTERN = re.compile(r"[0-9a-f]{12}|serve-[0-9]{1,5}")
TOKEN_PATTERN = re.compile(r"[0-9a-f]{32}")
#: The environment variable that marks every process of one resident engine start (its token).
MARKER_ENV = "STEPAUDIO_RESIDENT"
KINDS = ("resident", "serve")  # started by ask/batch; started by the user (`stepaudio serve`)
STATES = ("starting", "ready", "asleep")
ENTRY_MAX_BYTES = 64 << 10
KEY_MAX_BYTES = 4 << 10
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux
Warn = Callable[[str], None]


def folder() -> Path:
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


def path_of(entry_id: str, suffix: str) -> Path:
    """The registry file ``ID.suffix``; ``entry_id`` must be a valid id (nothing outside the folder)."""
    if not ID_PATTERN.fullmatch(entry_id):
        raise ValueError(f"not an engine id: {entry_id!r}")
    return folder() / f"{entry_id}{suffix}"


# --- entries ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    id: str
    kind: str  # "resident" or "serve"
    state: str  # "starting" or "ready"
    pid: int  # the server process (resident: stepaudio_cli.resident.server; serve: `stepaudio serve`)
    pid_started: str  # its start time (/proc): with the pid, one process ever
    model: str
    settings: dict = field(default_factory=dict)  # the engine-shaping settings (and a serve's keep_alive)
    token: str = ""  # resident: the marker its processes carry in their environment (MARKER_ENV)
    uds: bool = False  # listens on ID.sock in the folder
    port: int | None = None  # else on 127.0.0.1:port
    keyed: bool = False  # requests need the key in ID.key
    started: float = 0.0
    since: float = 0.0  # when it came to its state (asleep: since when it sleeps)

    @property
    def server_url(self) -> str:
        """The URL RemoteEngine takes: unix:/folder/ID.sock or http://127.0.0.1:PORT."""
        return UDS_SCHEME + str(path_of(self.id, ".sock")) if self.uds else f"http://127.0.0.1:{self.port}"

    @property
    def socket_path(self) -> Path | None:
        return path_of(self.id, ".sock") if self.uds else None

    def api_key(self) -> str | None:
        """The key in ``ID.key`` (only ever sent to this entry's own socket or loopback port)."""
        if not self.keyed:
            return None
        data = _read_private(path_of(self.id, ".key"), KEY_MAX_BYTES)
        text = data.decode("ascii", errors="replace").strip() if data else ""
        return text if text and text.isprintable() else None

    def is_ours(self) -> bool:
        """Its process is alive and provably the one this entry was written for."""
        if self.kind == "resident":
            marker = processes.has_env(MARKER_ENV, self.token)
        else:
            marker = processes.runs_stepaudio("serve")
        return processes.is_ours(self.pid, self.pid_started, marker)

    def left_behind(self) -> list[int]:
        """Processes of this resident engine's start still running (its server killed with -9)."""
        if self.kind != "resident":
            return []
        return processes.left_behind(MARKER_ENV, self.token, self.pid_started)

    @staticmethod
    def parse(data: object, name: str) -> Entry:
        """An entry from the JSON of the file ``name``; ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        fields = {f: data.get(f) for f in Entry.__dataclass_fields__}
        fields["since"] = data.get("since", 0.0)
        checks = {
            "id": lambda v: isinstance(v, str) and ID_PATTERN.fullmatch(v) and f"{v}.json" == name,
            "kind": lambda v: v in KINDS,
            "state": lambda v: v in STATES,
            "pid": lambda v: _is_int(v) and 1 < v < 1 << 22,
            "pid_started": lambda v: isinstance(v, str) and v.isdigit() and len(v) < 24,
            "model": lambda v: isinstance(v, str) and 0 < len(v) <= 4096,
            "settings": lambda v: isinstance(v, dict) and all(_is_setting(k, x) for k, x in v.items()),
            "token": lambda v: isinstance(v, str) and (v == "" or TOKEN_PATTERN.fullmatch(v)),
            "uds": lambda v: isinstance(v, bool),
            "port": lambda v: v is None or (_is_int(v) and 0 < v < 65536),
            "keyed": lambda v: isinstance(v, bool),
            "started": _is_time,
            "since": _is_time,
        }
        for key, ok in checks.items():
            if not ok(fields[key]):
                raise ValueError(f"bad {key!r}")
        if fields["kind"] == "resident" and not fields["token"]:
            raise ValueError("a resident engine without its token")
        if fields["state"] != "starting" and not fields["uds"] and fields["port"] is None:
            raise ValueError("ready without an address")
        return Entry(**fields)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_time(v: object) -> bool:
    return (_is_int(v) and v >= 0) or (isinstance(v, float) and math.isfinite(v) and v >= 0)


def _is_setting(key: object, value: object) -> bool:
    if not isinstance(key, str) or len(key) > 64:
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool) and len(str(value)) <= 4096


def save(entry: Entry) -> None:
    _write_private(path_of(entry.id, ".json"), json.dumps(asdict(entry), indent=1))


def remove(entry_id: str) -> None:
    """Forget an engine: its entry, socket, key and keep-alive files."""
    for suffix in (".json", ".sock", ".key", ".used"):
        with contextlib.suppress(FileNotFoundError):
            path_of(entry_id, suffix).unlink()


def read_entries(warn: Warn | None = None, clean: bool = True) -> list[Entry]:
    """Every engine whose process is provably the one its entry names; entries whose process is
    gone are removed (``clean``); files that are not valid entries are skipped, each with one
    ``warn`` line. An entry naming a live process without our marker is neither listed nor trusted."""
    found = []
    for path in sorted(folder().iterdir()):
        name = path.name
        if not name.endswith(".json") or name.startswith("."):
            continue  # a temp file being written, or another kind of file of ours
        try:
            entry = _entry_at(path)
        except (ValueError, RecursionError, UnicodeDecodeError) as e:
            if warn:
                warn(f"{path}: skipped, not a valid engine entry ({e})")
            continue
        if entry.is_ours():
            found.append(entry)
        elif clean and processes.start_time(entry.pid) != entry.pid_started:
            remove(entry.id)  # its process is gone (the pid is free, or names a later process)
    return found


def find(entry_id: str, warn: Warn | None = None) -> Entry | None:
    return next((e for e in read_entries(warn) if e.id == entry_id), None)


def as_written(entry_id: str) -> Entry | None:
    """The entry file of ``entry_id`` when it is a valid entry, without proving its process (an
    engine reading its own entry: a process is never "ours" to itself); None otherwise."""
    try:
        return _entry_at(path_of(entry_id, ".json"))
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None


def _entry_at(path: Path) -> Entry:
    """The entry the file ``path`` holds; ValueError (RecursionError, UnicodeDecodeError) when it
    is not a valid one, or not a private regular file of this user."""
    return Entry.parse(json.loads(_read_private(path, ENTRY_MAX_BYTES, strict=True)), path.name)


def _read_private(path: Path, limit: int, strict: bool = False) -> bytes | None:
    """The bytes of ``path`` when it is a regular file of this user, not a symlink, of at most
    ``limit`` bytes; else None (``strict``: ValueError saying why)."""

    def refuse(why: str):
        if strict:
            raise ValueError(why)
        return None

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        return refuse(e.strerror or str(e))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return refuse("not a regular file")
        if info.st_uid != os.getuid():
            return refuse("owned by another user")
        if info.st_size > limit:
            return refuse(f"larger than {limit} bytes")
        data = os.read(fd, limit + 1)
        return data if len(data) <= limit else refuse(f"larger than {limit} bytes")
    except OSError as e:
        return refuse(e.strerror or str(e))
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_key(entry_id: str, key: str) -> None:
    _write_private(path_of(entry_id, ".key"), key)


# --- locks and the last use -----------------------------------------------------------------------
def lock(entry_id: str, suffix: str, how: int) -> int | None:
    """An flock on ``ID.suffix`` (made 0600); None when ``how`` has LOCK_NB and it is held."""
    fd = os.open(path_of(entry_id, suffix), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the flock


def in_use(entry_id: str) -> bool:
    """A client holds the engine (its shared lock) right now."""
    fd = lock(entry_id, ".lock", fcntl.LOCK_EX | fcntl.LOCK_NB)
    unlock(fd)
    return fd is None


def touch(entry_id: str, keep_alive: float | None) -> None:
    """Mark the engine used now; ``keep_alive`` is how long it stays after this use (None: forever)."""
    _write_private(path_of(entry_id, ".used"), "forever" if keep_alive is None else repr(float(keep_alive)))


@dataclass(frozen=True)
class LastUse:
    when: float  # wall-clock time
    keep_alive: float | None  # what that use asked for (None: forever)


def last_use(entry_id: str, default: LastUse) -> LastUse:
    """When a client last used the engine, and the keep-alive it asked for; ``default`` when no
    valid record of it exists."""
    path = path_of(entry_id, ".used")
    data = _read_private(path, 64)
    try:
        when = path.lstat().st_mtime
    except OSError:
        return default
    text = data.decode("ascii", errors="replace").strip() if data is not None else ""
    if text == "forever":
        return LastUse(when, None)
    try:
        keep = float(text)
    except ValueError:
        return replace(default, when=when)
    return LastUse(when, keep) if math.isfinite(keep) and keep >= 0 else replace(default, when=when)
