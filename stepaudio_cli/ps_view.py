"""How `ps`, `stop` and `doctor` show the engines kept loaded (from resident.status's typed facts)."""

from __future__ import annotations

from stepaudio_cli.durations import format_duration
from stepaudio_cli.resident.status import EngineStatus, settings_summary
from stepaudio_cli.terminal import Terminal

COLUMNS = ("id", "model", "state", "settings", "address", "pid", "GPU memory", "for", "next")


def printable(text: str) -> str:
    """``text`` without control characters (an entry's text never moves the cursor or colours)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def row(status: EngineStatus) -> list[str]:
    e = status.entry
    since = "-" if status.idle_s is None else format_duration(status.idle_s)
    return [
        e.id,
        printable(e.model),
        "yours (serve)" if e.kind == "serve" else status.state,
        settings_summary(e),
        printable(e.server_url),
        str(e.pid),
        "-" if not status.gpu_mib else f"{status.gpu_mib / 1024:.1f} GiB",
        since,
        next_step(status),
    ]


def next_step(status: EngineStatus) -> str:
    """What the engine does next by itself: "sleeps in 4m10s", "stops in 52m", "stops when stopped"."""
    e = status.entry
    if status.state == "serving":
        keep = e.settings.get("keep_alive")
        return (
            "stops when stopped" if not isinstance(keep, int | float) else f"stops after {format_duration(keep)} unused"
        )
    if status.state not in ("idle", "asleep"):
        return "-"
    if status.stops_in_s is None:
        return "stops when stopped"
    sleeps = status.state == "idle" and e.settings.get("sleep_for") not in (0, 0.0)
    return f"{'sleeps' if sleeps else 'stops'} in {format_duration(status.stops_in_s)}"


def show(term: Terminal, statuses: list[EngineStatus]) -> None:
    rows = [row(s) for s in statuses]
    if not term.out.is_terminal:  # for scripts: one tab-separated line per engine, whole values
        term.write_out("\n".join("\t".join(r) for r in [list(COLUMNS), *rows]) + "\n")
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in COLUMNS:  # long values wrap within the terminal's width, never cut
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(*r)
    term.out.print(table)


def one_line(status: EngineStatus) -> str:
    """An engine in one line (doctor)."""
    _id, model, state, settings, address, _pid, gpu, _since, then = row(status)
    return f"{model} ({settings}) at {address}, {state}, GPU {gpu}, {then}"
