"""One path from a flag to vLLM: every engine-shaping setting has its option on the commands that
build an engine, reaches the typed settings by its name, and changes what vLLM is given."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from stepaudio_cli.cli import app
from stepaudio_cli.commands import options
from stepaudio_cli.engines.settings import EngineSettings, command_line_flags, vllm_args

# A value other than the default for every engine field. A new field fails here until it has
# one (and then below, until it has an option and reaches vLLM's arguments).
NON_DEFAULT = {
    "model": "/models/other",
    "max_model_len": 4096,
    "tensor_parallel_size": 2,
    "pipeline_parallel_size": 2,
    "distributed_executor_backend": "ray",
    "gpu_memory_utilization": 0.5,
    "dtype": "float16",
    "quantization": "fp8",
    "kv_cache_dtype": "fp8",
    "max_num_seqs": 7,
    "thinking_processor": True,
    "load_format": "dummy",
}
# Fields a command sets itself instead of taking an option: the reasoning-length processor is
# loaded when the reasoning options ask for it; `ask` keeps a small batch for one question.
DERIVED = {
    "ask": {"thinking_processor", "max_num_seqs"},
    "batch": {"thinking_processor"},
    "serve": {"thinking_processor"},
}
# Shared options a command declares itself, each with its own meaning; every other shared option a
# command has comes from the one declaration in commands/options.py.
OWN = {
    "ask": set(),
    "batch": set(),
    # model: an argument; max_model_len: default None (the most the KV cache holds); keep_alive: stop
    # when idle (default: run until stopped); api_key: the key the server requires.
    "serve": {"model", "max_model_len", "keep_alive", "api_key"},
    # model: default R1's real sizes with random weights; quantization: forms to compare (bf16 too).
    "bench": {"model", "quantization"},
    "doctor": {"model"},  # always a local model (default the release), never a served name
}


def test_every_engine_field_has_a_value_here():
    assert set(EngineSettings.engine_fields()) == set(NON_DEFAULT)


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_every_engine_field_reaches_vllm(name):
    base = EngineSettings(tensor_parallel_size=1)
    changed = dataclasses.replace(base, **{name: NON_DEFAULT[name]})
    path = Path("/m")
    if name == "model":  # the model reaches vLLM as the path it resolves to
        assert changed.model != base.model
        return
    assert vllm_args(changed, path, n_gpus=8) != vllm_args(base, path, n_gpus=8)


def _click_command(name):
    import typer.main

    return typer.main.get_command(app).commands[name]


def _argv(param, value) -> list[str]:
    flag = max(param.opts, key=len)
    return [flag] if param.is_flag else [flag, str(value)]


@pytest.mark.parametrize("command", sorted(DERIVED))
def test_every_engine_field_is_an_option_that_reaches_the_settings(command):
    cmd = _click_command(command)
    params = {p.name: p for p in cmd.params}
    argv = []
    expected = {}
    for name in EngineSettings.engine_fields():
        if name in DERIVED[command] or name == "model":
            continue
        assert name in params, f"`stepaudio {command}` has no option for the engine setting {name!r}"
        argv += _argv(params[name], NON_DEFAULT[name])
        expected[name] = NON_DEFAULT[name]
    ctx = cmd.make_context(command, argv, resilient_parsing=True)
    settings = options.engine_settings(ctx)
    assert {name: getattr(settings, name) for name in expected} == expected


def test_server_and_model_are_the_remote_pair():
    cmd = _click_command("ask")
    remote = options.engine_settings(
        cmd.make_context("ask", ["-s", "http://a:1,http://b:2", "-m", "r1"], resilient_parsing=True)
    )
    assert remote.servers == ("http://a:1", "http://b:2") and remote.served_model == "r1" and remote.remote
    local = options.engine_settings(cmd.make_context("ask", ["-m", "/data/r1"], resilient_parsing=True))
    assert local.model == "/data/r1" and local.served_model is None and not local.remote


def test_vllm_args_and_the_server_command_line_say_the_same():
    s = EngineSettings(model="m", max_model_len=None, kv_cache_dtype="fp8", thinking_processor=True)
    args = vllm_args(s, Path("/m"), n_gpus=1)
    flags = command_line_flags(args)
    assert flags[flags.index("--max-model-len") + 1] == "-1"  # vLLM fits the context to the KV cache
    assert flags[flags.index("--kv-cache-dtype") + 1] == "fp8"
    assert json.loads(flags[flags.index("--limit-mm-per-prompt") + 1]) == args["limit_mm_per_prompt"]
    assert flags[flags.index("--logits-processors") + 1] == args["logits_processors"][0]
    assert "--enforce-eager" not in flags  # a GPU: CUDA graphs and compilation stay on
    assert "--enforce-eager" in command_line_flags(vllm_args(s, Path("/m"), n_gpus=0))


def test_more_gpus_than_visible_is_one_line():
    from stepaudio_cli.errors import UserError

    with pytest.raises(UserError, match="needs 4 GPUs, but 2 are visible"):
        vllm_args(EngineSettings(tensor_parallel_size=4), Path("/m"), n_gpus=2)


def _command_function(name):
    return getattr(importlib.import_module(f"stepaudio_cli.commands.{name}"), name)


@pytest.mark.parametrize("command", sorted(OWN))
def test_commands_declare_no_shared_option_themselves(command):
    own = inspect.signature(_command_function(command).__wrapped__).parameters  # what `def` declares
    assert set(own) & set(options.BY_NAME) <= OWN[command], "declared again: take it with options.takes()"


def test_every_engine_setting_has_one_shared_option():
    settable = set(EngineSettings.engine_fields()) - {"thinking_processor"}  # the reasoning options load it
    assert settable <= {o.name for o in options.ENGINE}


@pytest.mark.parametrize("command", sorted(OWN))
def test_engine_options_come_from_the_shared_declaration(command):
    params = {p.name: p for p in _click_command(command).params}
    taken = {o.name for o in _command_function(command).shared_options}
    checked = 0
    for name in EngineSettings.engine_fields():
        if name not in params or name in OWN[command]:
            assert command not in DERIVED or name in DERIVED[command] | OWN[command], name
            continue
        assert name in taken, f"`stepaudio {command}` declares --{name.replace('_', '-')} itself"
        shared, param = options.BY_NAME[name], params[name]
        assert set(param.opts) == set(shared.flags or ["--" + name.replace("_", "-")])
        assert param.envvar == shared.envvar == "STEPAUDIO_" + name.upper()
        assert (param.help, param.rich_help_panel, param.hidden) == (
            shared.help,
            shared.panel,
            bool(shared.extras.get("hidden")),
        )
        checked += 1
    assert checked >= 3


def test_a_shared_option_is_one_declaration():
    """Adding an option: one shared() record in a group; every command that takes the group has it,
    with its env var, checks and help, and reads it by name in ctx.params."""
    knob = options.shared("new_knob", int, 3, "A new knob.", panel=options.ENGINE_PANEL, min=1)
    seen = {}

    @options.takes((knob,), options.JSON)
    def cmd(ctx: typer.Context, json_output: Annotated[bool, typer.Option("--json-out")] = False) -> None:
        seen.update(kwargs={"json_output": json_output}, params=dict(ctx.params))

    one = typer.Typer()
    one.command()(cmd)
    one.callback()(lambda: None)  # a group, so the command keeps its name
    runner = CliRunner()
    assert runner.invoke(one, ["cmd", "--new-knob", "5", "--json-out"]).exit_code == 0
    assert seen == {"kwargs": {"json_output": True}, "params": {"new_knob": 5, "json_output": True}}
    assert runner.invoke(one, ["cmd"], env={"STEPAUDIO_NEW_KNOB": "7"}).exit_code == 0
    assert seen["params"]["new_knob"] == 7
    assert runner.invoke(one, ["cmd", "--new-knob", "0"]).exit_code == 2  # min=1
    assert runner.invoke(one, ["cmd", "--json"]).exit_code == 2  # the command's own --json-out won
    with pytest.raises(ValueError, match="no shared option jsn"):
        options.takes(options.JSON, only=("jsn",))  # a typo takes nothing silently
