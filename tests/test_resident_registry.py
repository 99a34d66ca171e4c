"""Resident engines without vLLM: the registry, its locks and keep-alive, against a fake server
process that registers and idles the way `stepaudio serve --resident` does (resident.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepaudio_cli import resident
from stepaudio_cli.cli import app
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import UserError

# What `serve --resident ID --keep-alive K` does, minus vLLM: listen on the private socket,
# register once "ready", stop when idle; FAKE_FAIL fails the start the way serve reports it.
FAKE_SERVER = """
import os, socket, sys, time
from stepaudio_cli import resident
ident, keep, model = sys.argv[1], resident.parse_keep_alive(sys.argv[2]), sys.argv[3]
time.sleep(float(os.environ.get("FAKE_DELAY", "0.3")))
if os.environ.get("FAKE_FAIL"):
    print("error: vLLM exited with code 1 while starting: the KV cache does not fit (lower --max-model-len)")
    sys.exit(1)
uds, _, _ = resident.private_address(ident, True)
server = socket.socket(socket.AF_UNIX)
server.bind(uds)
server.listen()
resident.register(resident.Entry(id=ident, pid=os.getpid(), model=model, uds=uds))
watch = resident.IdleWatch(ident, keep)
while not watch.idle():
    time.sleep(0.05)
resident.remove(ident)
watch.release()
"""


@pytest.fixture
def fake(monkeypatch):
    """Resident starts run FAKE_SERVER; yields the list of started server pids."""
    started: list[str] = []

    def command(settings, entry_id, keep_alive, log):
        started.append(entry_id)
        keep = "forever" if keep_alive is None else repr(keep_alive)
        return [sys.executable, "-c", FAKE_SERVER, entry_id, keep, settings.model]

    monkeypatch.setattr(resident, "serve_command", command)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    yield started
    for entry in resident.read_entries():
        resident.stop(entry, timeout=10)


SETTINGS = EngineSettings(model="fake/model", max_model_len=4096)


def gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if resident._proc_started(pid) is None or _zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_keep_alive_durations():
    assert resident.parse_keep_alive("5m") == 300
    assert resident.parse_keep_alive("2s") == 2
    assert resident.parse_keep_alive("1.5h") == 5400
    assert resident.parse_keep_alive("90") == 90
    assert resident.parse_keep_alive("0") == 0
    assert resident.parse_keep_alive("forever") is None
    assert resident.parse_keep_alive("-1") is None
    assert resident.parse_keep_alive("100ms") == 0.1
    assert resident.parse_keep_alive("1h30m") == resident.parse_keep_alive("1:30:00") == 5400  # as --window
    with pytest.raises(UserError, match=r"--keep-alive 'soon': not a duration \(e\.g\. 5m, 90s, 1h, 0, forever\)"):
        resident.parse_keep_alive("soon")


def test_registry_folder_is_private(tmp_path, monkeypatch):
    folder = resident.registry_dir()
    assert folder == Path(os.environ["XDG_RUNTIME_DIR"]) / "stepaudio"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    os.chmod(folder, 0o755)
    assert stat.S_IMODE(resident.registry_dir().stat().st_mode) == 0o700
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert resident.registry_dir() == tmp_path / "state" / "stepaudio" / "run"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state" / "stepaudio" / "run").rmdir()
    (tmp_path / "state" / "stepaudio" / "run").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="refusing"):
        resident.registry_dir()


def test_identity_follows_the_engine_shaping_settings_only():
    base = resident.identity(SETTINGS)
    assert resident.identity(EngineSettings(model="fake/model", max_model_len=4096, timeout=5, wait_server=9)) == base
    for change in (
        {"max_model_len": 8192},
        {"dtype": "float16"},
        {"quantization": "fp8"},
        {"tensor_parallel_size": 2},
        {"gpu_memory_utilization": 0.5},
        {"load_format": "dummy"},
        {"model": "other/model"},
        {"max_num_seqs": 4},
    ):
        fields = {"model": "fake/model", "max_model_len": 4096, **change}
        assert resident.identity(EngineSettings(**fields)) != base, change


def test_dead_entries_are_cleaned(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    folder = resident.registry_dir()
    for suffix in (".sock", ".key"):
        (folder / f"dead{suffix}").write_text("")
    resident.Entry(id="dead", pid=proc.pid, model="m", uds=str(folder / "dead.sock"), pid_started="1").save()
    assert resident.read_entries() == []
    assert not list(folder.glob("dead.*"))


def test_two_starts_at_once_share_one_server_which_stops_after_its_keep_alive(fake):
    pids: list[int] = []

    def one():
        with resident.use(SETTINGS, 1.0, lambda text: None) as entry:
            pids.append(entry.pid)
            time.sleep(0.5)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(fake) == 1 and len(set(pids)) == 1 and len(pids) == 2
    folder = resident.registry_dir()
    sock = folder / f"{fake[0]}.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / f"{fake[0]}.json").stat().st_mode) == 0o600
    with resident.use(SETTINGS, 0.5, lambda text: None) as entry:  # reused: no second start
        assert entry.pid == pids[0]
    assert len(fake) == 1
    assert gone(pids[0]), "the server outlived its keep-alive"
    assert not sock.exists() and not (folder / f"{fake[0]}.json").exists()


def test_a_client_using_it_holds_it_even_when_killed_dash_9_it_lets_go(fake):
    holder_code = (
        "import time; from stepaudio_cli import resident; from stepaudio_cli.engines.settings import EngineSettings\n"
        "with resident.use(EngineSettings(model='fake/model', max_model_len=4096), 0.2, print):\n"
        "    print('held', flush=True); time.sleep(60)\n"
    )
    with resident.use(SETTINGS, 0.2, lambda text: None) as entry:
        holder = subprocess.Popen([sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True)
        try:
            for line in holder.stdout:
                if line.startswith("held"):
                    break
            time.sleep(1.0)  # past the keep-alive, but in use
            assert resident._proc_started(entry.pid) == entry.pid_started, "stopped while in use"
        except BaseException:
            holder.kill()
            raise
    try:
        time.sleep(1.0)
        assert resident._proc_started(entry.pid) == entry.pid_started, "stopped while a client held it"
    finally:
        holder.kill()
        holder.wait()
    assert gone(entry.pid), "a killed client kept the server up"


def test_a_killed_server_is_replaced_and_a_failed_start_says_why(fake, monkeypatch):
    with resident.use(SETTINGS, None, lambda text: None) as entry:
        first = entry.pid
    os.kill(first, signal.SIGKILL)
    assert gone(first)
    with resident.use(SETTINGS, None, lambda text: None) as entry:
        assert entry.pid != first
    resident.stop(entry)
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(UserError, match="did not start: vLLM exited .* KV cache does not fit"):
        with resident.use(SETTINGS, None, lambda text: None):
            pass


def test_ctrl_c_while_it_starts_stops_it_when_nobody_else_waits(fake, monkeypatch):
    monkeypatch.setenv("FAKE_DELAY", "30")
    spawned: list[int] = []
    real_spawn = resident._spawn

    def spawn(*args):
        info = real_spawn(*args)
        spawned.append(info["pid"])
        threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        return info

    monkeypatch.setattr(resident, "_spawn", spawn)
    with pytest.raises(KeyboardInterrupt), resident.use(SETTINGS, None, lambda text: None):
        pass
    assert gone(spawned[0], timeout=5)
    assert not (resident.registry_dir() / f"{fake[0]}.starting").exists()


def test_no_room_on_the_gpu_is_one_line_naming_the_holder(monkeypatch):
    from stepaudio_cli import gpus

    entry = resident.register(resident.Entry(id="other", pid=0, model="big/model", settings={"max_model_len": 8192}))
    monkeypatch.setattr(resident, "_connectable", lambda e: True)
    monkeypatch.setattr(gpus, "count_cheap", lambda: 1)
    assert resident.read_entries() == [entry]
    with pytest.raises(UserError) as info:
        resident._check_room(SETTINGS)
    assert "big/model" in info.value.message and "`stepaudio stop big/model`" in info.value.message
    resident._check_room(EngineSettings(model="fake/model", gpu_memory_utilization=0.05))  # fits beside it


def test_ps_and_stop_commands(fake):
    runner = CliRunner()
    assert "No model is loaded" in runner.invoke(app, ["ps"]).stderr
    with resident.use(SETTINGS, None, lambda text: None) as entry:
        pass
    listed = runner.invoke(app, ["ps"])
    assert listed.exit_code == 0 and "fake/model" in listed.stdout and str(entry.pid) in listed.stdout
    assert "when stopped" in listed.stdout
    missing = runner.invoke(app, ["stop", "other/model"])
    assert missing.exit_code == 1 and "no loaded engine serves other/model" in missing.stderr
    stopped = runner.invoke(app, ["stop", "fake/model"])
    assert stopped.exit_code == 0, stopped.stderr
    assert gone(entry.pid) and resident.read_entries() == []
    assert runner.invoke(app, ["stop"]).exit_code == 2


def test_entry_file_is_json_with_the_address(fake):
    with resident.use(SETTINGS, None, lambda text: None) as entry:
        data = json.loads((resident.registry_dir() / f"{entry.id}.json").read_text())
    assert data["uds"] == entry.uds and entry.server_url == "unix:" + entry.uds


def test_ask_without_a_terminal_keeps_the_one_line_errors(clip):
    runner = CliRunner()
    missing = runner.invoke(app, ["ask", "-m", "someone/not-here", "--keep-alive", "5m", str(clip), "What?"])
    assert missing.exit_code != 0 and "Traceback" not in missing.stderr
    (line,) = [ln for ln in missing.stderr.splitlines() if ln.startswith("error:")]
    assert "not downloaded yet" in line and "stepaudio download someone/not-here" in line
    assert resident.read_entries() == [] and not list(resident.registry_dir().glob("*.starting"))
    bad = runner.invoke(app, ["ask", "--keep-alive", "soon", str(clip), "What?"])
    assert bad.exit_code == 2 and "--keep-alive" in bad.stderr
