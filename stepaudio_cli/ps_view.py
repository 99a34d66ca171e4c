"""How `ps`, `stop` and `doctor` show the engines kept loaded (from resident.status's typed facts)."""

from __future__ import annotations

from stepaudio_cli.audio import format_duration
from stepaudio_cli.resident.status import EngineStatus, settings_summary
from stepaudio_cli.terminal import Terminal

COLUMNS = ("id", "model", "state", "settings", "address", "pid", "GPU memory", "idle for", "stops in")


def printable(text: str) -> str:
    """``text`` without control characters (an entry's text never moves the cursor or colours)."""
    return "".join(c if c.isprintable() else "?" for c in text)


def row(status: EngineStatus) -> list[str]:
    e = status.entry
    idle = "-" if status.idle_s is None else format_duration(status.idle_s)
    if status.state == "idle":
        stops = "when stopped" if status.stops_in_s is None else format_duration(status.stops_in_s)
    elif status.state == "serving":
        keep = e.settings.get("keep_alive")
        stops = "when stopped" if not isinstance(keep, int | float) else f"after {format_duration(keep)} unused"
    else:
        stops = "-"
    gpu = "-" if not status.gpu_mib else f"{status.gpu_mib / 1024:.1f} GiB"
    state = "yours (serve)" if e.kind == "serve" else status.state
    return [e.id, printable(e.model), state, settings_summary(e), printable(e.server_url), str(e.pid), gpu, idle, stops]


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
    _id, model, state, settings, address, _pid, gpu, _idle, stops = row(status)
    return f"{model} ({settings}) at {address}, {state}, GPU {gpu}, stops {stops}"
