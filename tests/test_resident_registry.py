"""Resident engines without vLLM: the registry read strictly, processes signalled only when proven
ours, `ps`/`stop` on what a hostile or stale registry holds, keep-alive parsing and identity."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepaudio_cli import processes
from stepaudio_cli.cli import app
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import UserError
from stepaudio_cli.resident import client, parse_keep_alive, registry
from stepaudio_cli.resident.registry import Entry

runner = CliRunner()
SETTINGS = EngineSettings(model="fake/model", max_model_len=4096)
TOKEN = "ab" * 16


@pytest.fixture(autouse=True)
def _own(own_registry):
    """Every test here has a registry of its own."""


@pytest.fixture
def bystander():
    """An unrelated process of this user (sleep), stopped at the end."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc
    proc.kill()
    proc.wait()


def write(name: str, data) -> Path:
    path = registry.folder() / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(0o600)
    return path


def entry_data(real_pid: int, **over) -> dict:
    pid = real_pid
    data = {
        "id": "0123456789ab",
        "kind": "resident",
        "state": "ready",
        "pid": pid,
        "pid_started": processes.start_time(real_pid),
        "model": "fake/model",
        "settings": {"max_model_len": 4096},
        "token": TOKEN,
        "uds": True,
        "port": None,
        "keyed": False,
        "started": time.time(),
    }
    return data | over


def alive(proc: subprocess.Popen) -> bool:
    return proc.poll() is None


def test_keep_alive_durations():
    assert parse_keep_alive("5m") == 300 and parse_keep_alive("90") == 90 and parse_keep_alive("0") == 0
    assert parse_keep_alive("forever") is None and parse_keep_alive("-1") is None
    with pytest.raises(UserError, match="--keep-alive"):
        parse_keep_alive("soon")


def test_registry_folder_is_private(tmp_path, monkeypatch):
    assert stat.S_IMODE(registry.folder().stat().st_mode) == 0o700
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert registry.folder() == tmp_path / "state" / "stepaudio" / "run"


def test_identity_follows_the_engine_shaping_settings_only():
    base = client.identity(SETTINGS)
    assert client.identity(EngineSettings(model="fake/model", max_model_len=4096, timeout=5, wait_server=9)) == base
    assert client.identity(EngineSettings(model="fake/model", max_model_len=4096, thinking_processor=True)) == base
    for change in ({"max_model_len": 8192}, {"quantization": "fp8"}, {"gpu_memory_utilization": 0.5}):
        assert client.identity(EngineSettings(**({"model": "fake/model", "max_model_len": 4096} | change))) != base


@pytest.mark.parametrize(
    "change",
    [
        {"pid": -1},
        {"pid": 0},
        {"pid": 1},
        {"pid": "x"},
        {"pid": True},
        {"id": "../../etc/x"},
        {"port": 99999, "uds": False},
        {"started": "yesterday"},
        {"settings": {"max_model_len": [1, 2]}},
        {"kind": "other"},
        {"token": "../x"},
    ],
)
def test_a_hostile_entry_is_skipped_with_one_warning_and_nothing_is_signalled(bystander, change):
    data = entry_data(bystander.pid, **change)
    write("0123456789ab.json", data)
    warnings = []
    assert registry.read_entries(warn=warnings.append) == []
    assert len(warnings) == 1 and "not a valid engine entry" in warnings[0]
    result = runner.invoke(app, ["stop", "--all"])
    assert result.exit_code == 0, result.stderr
    assert alive(bystander)
    assert "Traceback" not in result.stderr


def test_an_entry_naming_an_unrelated_process_with_its_true_start_time_is_never_signalled(bystander):
    write("0123456789ab.json", entry_data(bystander.pid))  # a resident entry: the marker is missing
    write("serve-9999.json", entry_data(bystander.pid, id="serve-9999", kind="serve", token="", port=9999, uds=False))
    for args in (["stop", "--all"], ["stop", "fake/model"], ["stop", "serve-9999"], ["stop", "0123456789ab"]):
        result = runner.invoke(app, args)
        assert "Traceback" not in result.stderr
    assert alive(bystander)
    assert registry.read_entries() == [], "an entry without our marker is not listed"
    bystander.kill()
    bystander.wait()
    registry.read_entries()
    assert not (registry.folder() / "0123456789ab.json").exists(), "an entry whose process is gone is cleaned up"


def test_fifo_symlink_and_foreign_files_do_not_hang_or_exhaust_ps(tmp_path):
    folder = registry.folder()
    os.mkfifo(folder / "aaaaaaaaaaaa.json")
    (folder / "bbbbbbbbbbbb.json").symlink_to("/dev/zero")
    write("cccccccccccc.json", "{" * 100_000)  # deep nesting
    write("dddddddddddd.json", "x" * (registry.ENTRY_MAX_BYTES + 1))
    write("eeeeeeeeeeee.json", "[1, 2]")
    write("eeeeeeeeeeee.used", "1e999")
    result = runner.invoke(app, ["ps"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("skipped, not a valid engine entry") == 5
    assert "No model is loaded" in result.stderr
    doctor = runner.invoke(app, ["doctor"])
    assert doctor.exit_code in (0, 1) and "Traceback" not in doctor.stderr and "internal error" not in doctor.stderr


def test_ps_shows_a_live_engine_without_control_characters(tmp_path):
    """A script named stepaudio run as `stepaudio serve` stands in for one: ps lists it, its text cleaned."""
    script = tmp_path / "stepaudio"
    script.write_text("import time\ntime.sleep(60)\n")
    me = subprocess.Popen([sys.executable, str(script), "serve", "--port", "9999"])
    time.sleep(0.3)
    try:
        write(
            "serve-9999.json",
            entry_data(
                me.pid, id="serve-9999", kind="serve", token="", port=9999, uds=False, model="evil\x1b[2J\x07model"
            ),
        )
        # ownership needs the serve command line: argv has 'serve' and the word stepaudio
        assert [e.id for e in registry.read_entries()] == ["serve-9999"]
        result = runner.invoke(app, ["ps"])
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "evil?[2J?model" in result.stdout and "http://127.0.0.1:9999" in result.stdout
        assert "yours (serve)" in result.stdout
        # stop --all leaves the user's own serve alone; naming its id stops it
        assert runner.invoke(app, ["stop", "--all"]).exit_code == 0 and alive(me)
        stopped = runner.invoke(app, ["stop", "serve-9999"])
        assert stopped.exit_code == 0, stopped.stderr
        me.wait(10)
        assert me.returncode == -signal.SIGTERM
    finally:
        if alive(me):
            me.kill()
            me.wait()


def test_a_key_is_read_only_from_its_own_private_file():
    entry = Entry.parse(entry_data(os.getpid(), keyed=True, uds=False, port=8000), "0123456789ab.json")
    assert entry.server_url == "http://127.0.0.1:8000"
    key = registry.path_of(entry.id, ".key")
    key.symlink_to("/etc/hostname")
    assert entry.api_key() is None  # a symlink is not followed
    key.unlink()
    registry.write_key(entry.id, "k3y")
    assert entry.api_key() == "k3y" and stat.S_IMODE(key.stat().st_mode) == 0o600


def test_no_room_on_the_gpu_is_one_line_naming_the_holder(monkeypatch):
    holder = subprocess.Popen(["sleep", "60"], env={**os.environ, registry.MARKER_ENV: TOKEN})
    try:
        time.sleep(0.2)
        write("0123456789ab.json", entry_data(holder.pid, settings={"gpu_memory_utilization": 0.9}))
        monkeypatch.setattr("stepaudio_cli.gpus.count_cheap", lambda: 1)
        with pytest.raises(UserError, match=r"held by a resident engine for fake/model; .*stepaudio stop 0123456789ab"):
            client.check_room(EngineSettings(model="other/model"))
        stopped = runner.invoke(app, ["stop", "--all"])  # proven ours: its marker is there
        assert stopped.exit_code == 0, stopped.stderr
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()


def test_stop_needs_a_target_and_ignores_the_config_model(tmp_path, monkeypatch):
    config = tmp_path / "config" / "stepaudio" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('model = "fake/model"\n')
    result = runner.invoke(app, ["stop", "--all"])
    assert result.exit_code == 0, result.stderr
    bare = runner.invoke(app, ["stop"])
    assert bare.exit_code == 2 and "or --all" in bare.stderr


def test_a_model_that_is_not_there_is_refused_before_anything_starts(clip, tmp_path):
    for command in (["ask", "-m", "someone/not-here", str(clip), "What?"], ["batch", "-m", "someone/not-here"]):
        if command[0] == "batch":
            command += [str(clip), "-p", "Q", "-o", str(tmp_path / "r.jsonl")]
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.stderr
        assert "someone/not-here" in result.stderr and "stepaudio download" in result.stderr
        assert list(registry.folder().iterdir()) == []  # no engine started, nothing registered


def test_in_process_start_short_of_memory_names_the_resident_engine_holding_it(ckpt):
    from stepaudio_cli.errors import EngineError
    from stepaudio_cli.resident import session

    holder = subprocess.Popen(["sleep", "60"], env={**os.environ, registry.MARKER_ENV: TOKEN})
    try:
        time.sleep(0.2)
        write("0123456789ab.json", entry_data(holder.pid))
        with pytest.raises(EngineError) as caught:
            with session(EngineSettings(model=str(ckpt)), 0, lambda text: None):
                raise EngineError(f"{ckpt}: vLLM could not start the model: ValueError: Available memory 0.2 GiB")
        (line,) = caught.value.message.splitlines()
        assert "Available memory" in line and "stepaudio stop 0123456789ab" in line and "fake/model" in line
    finally:
        holder.kill()
        holder.wait()


def test_the_examples_in_ps_and_stop_help_are_valid_commands():
    import shlex

    for command in ("ps", "stop"):
        shown = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        examples = [line.split("$ ", 1)[1] for line in shown.splitlines() if "$ stepaudio" in line]
        assert examples, command
        for example in examples:
            result = runner.invoke(app, shlex.split(example)[1:])
            assert result.exit_code in (0, 1) and "Usage" not in result.stderr, (example, result.stderr)


def test_an_engine_asleep_leaves_the_gpu_to_a_new_one(monkeypatch):
    holder = subprocess.Popen(["sleep", "60"], env={**os.environ, registry.MARKER_ENV: TOKEN})
    try:
        time.sleep(0.2)
        write("0123456789ab.json", entry_data(holder.pid, state="asleep", settings={"gpu_memory_utilization": 0.9}))
        monkeypatch.setattr("stepaudio_cli.gpus.count_cheap", lambda: 1)
        client.check_room(EngineSettings(model="other/model"))  # no error: its weights are in host memory
    finally:
        holder.kill()
        holder.wait()
