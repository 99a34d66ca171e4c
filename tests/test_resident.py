"""`ask` on a resident engine: real `stepaudio ask` processes, real `stepaudio serve` engines (vLLM
on CPU, the scripted tiny checkpoint). Three engine starts in all: A (two first asks at once,
then reused), B (another memory fraction, beside A), C (A's settings again after A was killed -9)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SCRIPT

from stepaudio_cli import resident

pytestmark = pytest.mark.engine
REASONING, ANSWER = SCRIPT


@pytest.fixture(scope="module")
def home():
    """One registry and cache for the module (short: socket paths hold 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sa-") as tmp:
        (Path(tmp) / "run").mkdir(mode=0o700)
        yield Path(tmp)
        env = {"XDG_RUNTIME_DIR": str(Path(tmp) / "run"), "XDG_CACHE_HOME": str(Path(tmp) / "cache")}
        subprocess.run([sys.executable, "-m", "stepaudio_cli", "stop", "--all"], env={**os.environ, **env}, timeout=120)


@pytest.fixture(autouse=True)
def _shared_home(_isolated_home, home, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "stepaudio_cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def ask(ckpt: Path, clip: Path, *extra: str, keep: str = "10m") -> subprocess.Popen:
    return cli("ask", "-m", str(ckpt), "--max-model-len", "4096", "--keep-alive", keep, *extra, str(clip), "What?")


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert out.strip() == ANSWER and REASONING in err
    return err


def engines(model: Path) -> list[resident.Entry]:
    return [e for e in resident.read_entries() if e.model == str(model)]


def starts(entry: resident.Entry) -> int:
    return Path(entry.log).read_text(errors="replace").count("Starting vLLM for")


def processes_naming(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            continue
    return found


def running(pid: int) -> bool:
    return resident._proc_started(pid) is not None


def test_two_first_asks_share_one_engine_and_the_next_reuses_it(scripted_ckpt, clip):
    first = [ask(scripted_ckpt, clip), ask(scripted_ckpt, clip)]
    for proc in first:
        finish(proc)
    (entry,) = engines(scripted_ckpt)
    assert starts(entry) == 1
    folder = resident.registry_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(entry.uds).st_mode) == 0o600 and entry.uds.startswith(str(folder))
    assert stat.S_IMODE((folder / f"{entry.id}.json").stat().st_mode) == 0o600
    err = finish(ask(scripted_ckpt, clip))  # no start: connects at once
    (again,) = engines(scripted_ckpt)
    assert again.pid == entry.pid and starts(again) == 1 and "Loading" not in err
    # --think-budget takes the remote scheme against it
    finish(ask(scripted_ckpt, clip, "--min-think", "3"))


def test_other_settings_get_another_engine_listed_by_ps(scripted_ckpt, clip):
    (a,) = engines(scripted_ckpt)
    finish(ask(scripted_ckpt, clip, "--gpu-memory-utilization", "0.2"))
    both = engines(scripted_ckpt)
    assert len(both) == 2 and a.pid in {e.pid for e in both}
    listed = cli("ps")
    out, err = listed.communicate(timeout=60)
    assert listed.returncode == 0, err
    assert out.count("unix:") == 2 and "memory 0.2" in out


def test_killed_engine_is_replaced_and_keep_alive_2s_frees_everything(scripted_ckpt, clip):
    a = next(e for e in engines(scripted_ckpt) if not e.settings["gpu_memory_utilization"])
    os.kill(a.pid, signal.SIGKILL)
    finish(ask(scripted_ckpt, clip, keep="2s"))
    c = next(e for e in engines(scripted_ckpt) if not e.settings["gpu_memory_utilization"])
    assert c.pid != a.pid and c.id == a.id
    deadline = time.monotonic() + 60
    while running(c.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not running(c.pid), "the engine outlived --keep-alive 2s"
    assert not Path(c.uds).exists() and not (resident.registry_dir() / f"{c.id}.json").exists()
    assert not processes_naming(c.uds), "vLLM outlived its server"
    # stop frees the other one, and then nothing is left
    (b,) = engines(scripted_ckpt)
    stopped = cli("stop", str(scripted_ckpt))
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 0, err
    assert not running(b.pid) and resident.read_entries() == []
