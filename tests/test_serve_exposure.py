"""`serve`'s key and exposure rules, without starting vLLM: the key reaches vLLM through its
environment (never an argv that `ps` shows), and a server beyond loopback needs a key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepaudio_cli import serve as core
from stepaudio_cli.cli import app
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import UserError

runner = CliRunner()


def test_the_vllm_child_gets_the_key_in_its_environment_not_its_argv(tmp_path, monkeypatch):
    """A stand-in child (not vLLM) started the way vLLM is: what `ps` shows of it has no key."""
    monkeypatch.setattr(core.Watchdog, "watch_group", lambda self, pid: None)
    probe = tmp_path / "seen.txt"
    code = (
        "import os, sys, pathlib\n"
        "argv = pathlib.Path(f'/proc/{os.getpid()}/cmdline').read_bytes().replace(b'\\0', b' ').decode()\n"
        f"pathlib.Path({str(probe)!r}).write_text(argv + '\\n' + os.environ.get('VLLM_API_KEY', ''))\n"
    )
    opts = core.ServeOptions(engine=EngineSettings(model="stepfun-ai/Step-Audio-R1"), api_key="s3cret-key")
    cmd = core.build_command(opts, tmp_path, 0)
    assert not any("s3cret" in part for part in cmd)
    child = [sys.executable, "-c", code, *cmd[3:]]
    server = core.VllmServerProcess(child, tmp_path / "log", False, api_key=opts.api_key)
    try:
        server.proc.wait(30)
    finally:
        server.stop(grace=1)
    argv, env_key = probe.read_text().rsplit("\n", 1)
    assert "--served-model-name" in argv and "s3cret" not in argv
    assert env_key == "s3cret-key"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "gpu-box.example"])
def test_serving_beyond_loopback_without_a_key_is_refused(host, monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    monkeypatch.delenv("STEPAUDIO_API_KEY", raising=False)
    result = runner.invoke(app, ["serve", "/nonexistent-model", "--host", host])
    assert result.exit_code == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: --host {host} serves beyond this machine") and "--insecure-no-key" in line


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_needs_no_key(host):
    core.check_exposure(core.ServeOptions(engine=EngineSettings(model="m"), host=host))


def test_a_key_or_insecure_no_key_allows_any_host(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    core.check_exposure(core.ServeOptions(engine=EngineSettings(model="m"), host="0.0.0.0", api_key="k"))
    core.check_exposure(core.ServeOptions(engine=EngineSettings(model="m"), host="0.0.0.0", insecure_no_key=True))


def test_the_server_key_is_ours_else_vllm_s_after_dashes_else_its_environment(monkeypatch):
    def key(extra=(), api_key=None):
        return core.ServeOptions(engine=EngineSettings(model="m"), api_key=api_key, extra=list(extra)).server_key

    monkeypatch.setenv("VLLM_API_KEY", "env")
    assert key(["--api-key", "a1", "a2"], api_key="ours") == "ours"
    assert key(["--port-x", "1", "--api-key", "a1", "a2"]) == key(["--api-key=a1"]) == "a1"
    assert key(["--api-key"]) == key(["--api-key", "--other"]) == key() == "env"
    monkeypatch.delenv("VLLM_API_KEY")
    assert key() is None
    with pytest.raises(UserError, match="serves beyond this machine"):
        core.check_exposure(core.ServeOptions(engine=EngineSettings(model="m"), host="0.0.0.0"))
    core.check_exposure(core.ServeOptions(engine=EngineSettings(model="m"), host="0.0.0.0", extra=["--api-key", "k"]))


def test_key_file(tmp_path, monkeypatch):
    from stepaudio_cli.commands.serve import read_key_file
    from stepaudio_cli.errors import UserError

    key = tmp_path / "key"
    key.write_text("  abc123 \nignored\n")
    assert read_key_file(key) == "abc123"
    for content in (b"", b"\n \n", b"\xff\xfe"):
        key.write_bytes(content)
        with pytest.raises(UserError, match=str(key)):
            read_key_file(key)
    monkeypatch.delenv("STEPAUDIO_API_KEY", raising=False)
    key.write_text("abc\n")
    both = runner.invoke(app, ["serve", "m", "--api-key", "x", "--api-key-file", str(key)])
    assert both.exit_code == 2 and "not both" in both.stderr
    missing = runner.invoke(app, ["serve", "m", "--api-key-file", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "--api-key-file" in missing.stderr and "Traceback" not in missing.stderr


def test_help_says_a_key_on_the_command_line_is_visible():
    env = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(core.__file__).parents[1])}
    cmd = [sys.executable, "-m", "stepaudio_cli", "serve", "--help"]
    text = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    assert "--api-key-file" in text and "visible to other" in text and "--insecure-no-key" in text
