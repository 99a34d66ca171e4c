"""What `ps` and `doctor` report of each engine kept loaded: typed facts, no display strings."""

from __future__ import annotations

import time
from dataclasses import dataclass

from stepaudio_cli.defaults import GPU_MEMORY_FRACTION
from stepaudio_cli.resident import registry
from stepaudio_cli.resident.registry import Entry


@dataclass(frozen=True)
class EngineStatus:
    entry: Entry
    state: str  # "starting", "in use", "idle", "asleep" (resident engines); "serving" (a `stepaudio serve`)
    idle_s: float | None  # seconds since its last use (idle), or since it fell asleep (asleep)
    stops_in_s: float | None  # seconds left of its keep-alive, or of its sleep (None: never by itself)
    gpu_mib: int | None  # GPU memory its processes hold (None: cannot be told)


def statuses(entries: list[Entry]) -> list[EngineStatus]:
    from stepaudio_cli import gpus, processes

    used = gpus.memory_by_pid() if entries else {}
    found = []
    for e in entries:
        gpu = sum(used.get(p, 0) for p in processes.tree(e.pid)) if used else None
        if e.state == "starting":
            found.append(EngineStatus(e, "starting", None, None, gpu))
            continue
        if e.kind == "serve":  # the user's own: it counts requests from every client itself
            found.append(EngineStatus(e, "serving", None, None, gpu))
            continue
        if registry.in_use(e.id):
            found.append(EngineStatus(e, "in use", None, None, gpu))
            continue
        if e.state == "asleep":
            asleep = max(time.time() - e.since, 0.0)
            sleep_for = e.settings.get("sleep_for")
            stops = None if not isinstance(sleep_for, int | float) else max(sleep_for - asleep, 0.0)
            found.append(EngineStatus(e, "asleep", asleep, stops, gpu))
            continue
        use = registry.last_use(e.id, registry.LastUse(e.started, None))
        idle = max(time.time() - use.when, 0.0)
        stops = None if use.keep_alive is None else max(use.keep_alive - idle, 0.0)
        found.append(EngineStatus(e, "idle", idle, stops, gpu))
    return found


def settings_summary(entry: Entry) -> str:
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


def memory_fraction(entry: Entry) -> float:
    value = entry.settings.get("gpu_memory_utilization")
    return value if isinstance(value, int | float) and not isinstance(value, bool) else GPU_MEMORY_FRACTION
