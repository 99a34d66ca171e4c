"""Shell completions: the committed scripts are what the CLI generates, and completing
through them returns the CLI's real commands and options."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def complete(env: dict) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-m", "stepaudio_cli"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def test_committed_scripts_match_the_cli():
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-completions.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    for name in ("stepaudio.bash", "_stepaudio", "stepaudio.fish"):
        assert "_STEPAUDIO_COMPLETE" in (ROOT / "completions" / name).read_text()


def click_command():
    import typer.main

    from stepaudio_cli.cli import app

    return typer.main.get_command(app)


def test_bash_completes_every_command():
    group = click_command()
    got = complete({"_STEPAUDIO_COMPLETE": "complete_bash", "COMP_WORDS": "stepaudio ", "COMP_CWORD": "1"})
    assert set(got) == {name for name, cmd in group.commands.items() if not cmd.hidden}


@pytest.mark.parametrize("command", ["ask", "batch", "serve", "download", "stop"])
def test_bash_completes_each_commands_options(command):
    cmd = click_command().commands[command]
    expected = {
        o for p in cmd.params if p.param_type_name == "option" and not p.hidden for o in p.opts if o.startswith("--")
    }
    got = complete({"_STEPAUDIO_COMPLETE": "complete_bash", "COMP_WORDS": f"stepaudio {command} --", "COMP_CWORD": "2"})
    assert expected <= set(got), expected - set(got)


def test_zsh_completes_options_with_help():
    got = "\n".join(complete({"_STEPAUDIO_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": "stepaudio batch --re"}))
    assert "--retry-failed" in got and "--recursive" in got and "On resume" in got


def test_fish_completes_commands():
    got = complete(
        {
            "_STEPAUDIO_COMPLETE": "complete_fish",
            "_TYPER_COMPLETE_FISH_ACTION": "get-args",
            "_TYPER_COMPLETE_ARGS": "stepaudio do",
        }
    )
    assert any(line.startswith("download") for line in got) and any(line.startswith("doctor") for line in got)
