"""The local log (logs.db): every `ask` turn written to SQLite, `stepaudio logs` to read it back,
and a log that cannot be written never costing an answer. Against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from chat_server import ANSWER, REASONING, ask, logs, scripted_server

from stepaudio_cli import logbook
from stepaudio_cli.audio import sha256_file


@pytest.fixture
def scripted(http_servers):
    """``scripted(*replies) -> (url, bodies)``: a scripted server and the requests it got."""
    return lambda *replies: scripted_server(http_servers, *replies)


def db_path() -> Path:
    return Path(os.environ["XDG_DATA_HOME"]) / "stepaudio" / "logs.db"


def test_every_ask_is_logged_and_logs_lists_it(scripted, clip):
    url, _ = scripted()
    result = ask("--server", url, "--temperature", "0.5", str(clip), "What is it?")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"

    listed = logs("--json")
    assert listed.exit_code == 0, listed.stderr
    (record,) = json.loads(listed.stdout)
    assert record["question"] == "What is it?"
    assert record["reasoning"] == REASONING and record["answer"] == ANSWER
    assert record["reply"] == f"<think>\n{REASONING}</think>{ANSWER}"  # as generated, sent back in a follow-up
    assert record["model"] == "scripted" and record["command"] == "ask"
    assert record["turn"] == 1 and len(record["conversation"]) == 12
    assert record["settings"]["temperature"] == 0.5 and record["settings"]["engine"]["servers"] == [url]
    assert record["usage"] == {"prompt_tokens": 100, "completion_tokens": 12, "reasoning_tokens": 1}
    assert record["timings"]["total"] > 0
    # Audio by path and hash, never copied.
    assert record["audio"] == [
        {"name": str(clip), "path": str(clip.resolve()), "sha256": sha256_file(clip), "seconds": 3.0}
    ]
    assert db_path().stat().st_size < 200_000

    table = logs()
    assert table.exit_code == 0
    assert record["conversation"] in table.stdout and "What is it?" in table.stdout and ANSWER in table.stdout


def test_the_database_is_private_versioned_and_in_wal_mode(scripted, clip):
    url, _ = scripted()
    assert ask("--server", url, str(clip), "Q?").exit_code == 0
    path = db_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == logbook.SCHEMA_VERSION
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_count_search_and_conversation_filters(scripted, clip):
    url, _ = scripted(("r1", "The budget was approved."), ("r2", "Nobody disagreed."), ("r3", "Two speakers."))
    for question in ("What about the budget?", "Did anyone disagree?", "How many speakers?"):
        assert ask("--server", url, str(clip), question).exit_code == 0
    every = json.loads(logs("--json").stdout)
    assert [r["question"] for r in every] == ["What about the budget?", "Did anyone disagree?", "How many speakers?"]
    newest = json.loads(logs("--json", "-n", "2").stdout)
    assert [r["question"] for r in newest] == ["Did anyone disagree?", "How many speakers?"]
    found = json.loads(logs("--json", "-q", "budget").stdout)
    assert [r["answer"] for r in found] == ["The budget was approved."]
    assert json.loads(logs("--json", "-q", "disagree* NOT budget").stdout)[0]["answer"] == "Nobody disagreed."
    assert json.loads(logs("--json", "-q", "nothinglikethis").stdout) == []
    mine = json.loads(logs("--json", "--conversation", every[1]["conversation"]).stdout)
    assert [r["question"] for r in mine] == ["Did anyone disagree?"]


@pytest.mark.parametrize("query", ["budget AND", '"unterminated', "nosuchcolumn:x"])
def test_a_malformed_search_is_one_error_line(scripted, clip, query):
    url, _ = scripted()
    assert ask("--server", url, str(clip), "Q?").exit_code == 0
    result = logs("-q", query)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: -q") and "not a valid full-text query" in line


def test_logs_with_nothing_logged_creates_nothing():
    assert json.loads(logs("--json").stdout) == []
    assert "Nothing logged yet" in logs().stderr
    assert not db_path().exists()


@pytest.mark.parametrize("how", ["flag", "env", "config"])
def test_logging_can_be_turned_off(scripted, clip, how, tmp_path):
    url, _ = scripted()
    args, env = ["--server", url, str(clip), "Q?"], None
    if how == "flag":
        args.insert(0, "--no-log")
    elif how == "env":
        env = {"STEPAUDIO_LOG": "0"}
    else:
        config = Path(os.environ["XDG_CONFIG_HOME"]) / "stepaudio" / "config.toml"
        config.parent.mkdir(parents=True)
        config.write_text("log = false\n")
    result = ask(*args, env=env)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert not db_path().exists()


def _broken_locked(path: Path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE held (x)")
    db.execute("BEGIN EXCLUSIVE")  # another process holds the write lock for the whole ask
    return db


def _broken_corrupt(path: Path):
    path.write_bytes(b"this is not a database, it only has the name of one " * 100)


def _broken_newer(path: Path):
    sqlite3.connect(path).execute("PRAGMA user_version = 99")


def _broken_full(path: Path):
    path.symlink_to("/dev/full")  # every write: ENOSPC


@pytest.mark.parametrize(
    "breaker, reason",
    [
        (_broken_locked, "database is locked"),
        (_broken_corrupt, "not a database"),
        (_broken_newer, "newer stepaudio"),
        (_broken_full, "database or disk is full"),
    ],
)
def test_a_broken_log_never_costs_the_answer(scripted, clip, monkeypatch, breaker, reason):
    monkeypatch.setattr(logbook, "BUSY_SECONDS", 0.2)
    path = db_path()
    path.parent.mkdir(parents=True)
    keep = breaker(path)
    url, _ = scripted()
    for json_output in (False, True):
        result = ask("--server", url, *(["--json"] if json_output else []), str(clip), "Q?")
        assert result.exit_code == 0, result.output
        if json_output:
            assert json.loads(result.stdout)["answer"] == ANSWER
        else:
            assert result.stdout == ANSWER + "\n"
        warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
        assert len(warnings) == 1 and str(path) in warnings[0] and reason in warnings[0], result.stderr
        assert "Traceback" not in result.stderr
    del keep


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
