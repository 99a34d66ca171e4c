"""The local log (logs.db): written by several processes at once, read back by `stepaudio logs`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from stepaudio_cli import logbook
from stepaudio_cli.cli import app


def db_path() -> Path:
    return Path(os.environ["XDG_DATA_HOME"]) / "stepaudio" / "logs.db"


def logs(*args: str):
    return CliRunner().invoke(app, ["logs", *args])


def test_logs_with_nothing_logged_creates_nothing():
    assert json.loads(logs("--json").stdout) == []
    assert "Nothing logged yet" in logs().stderr
    assert not db_path().exists()


WRITER = """
import sys
from stepaudio_cli.logbook import Entry, Logbook
book = Logbook()
for i in range(int(sys.argv[2])):
    book.add(Entry(conversation=sys.argv[1], turn=i + 1, command="ask", question=f"q {sys.argv[1]} {i}",
                   system=None, reasoning="r", answer="a", reply="<think>\\nr</think>a", model="m", settings={},
                   usage=None, timings=None, finish_reason="stop", audio_seconds=1.0))
"""


def test_two_processes_logging_at_once_lose_nothing(tmp_path):
    n = 60
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])}
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, name, str(n)], env=env, stderr=subprocess.PIPE)
        for name in ("one", "two")
    ]
    for w in writers:
        assert w.wait(60) == 0, w.stderr.read().decode()
    records = logbook.Logbook().newest(1000)
    assert sorted(r["question"] for r in records) == sorted(f"q {w} {i}" for w in ("one", "two") for i in range(n))
    assert len(logbook.Logbook().newest(1000, query="one")) == n  # the search index has every row too
