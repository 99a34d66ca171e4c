"""One path from a flag to vLLM: every engine-shaping setting has its option on the commands that
build an engine, reaches the typed settings by its name, and changes what vLLM is given."""

from __future__ import annotations

import dataclasses
import importlib
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
# Commands that take shared options (with options.takes); those they take in a variant of their
# own (Shared.vary: own default, help or an argument) keep the declaration's flags and env var.
TAKERS = ("ask", "batch", "serve", "bench", "doctor")
# Options a command declares itself under a shared option's flag, with its own meaning: serve's
# --keep-alive stops an idle server; bench's --model and --quantization say what it measures.
# batch and bench: -c is their --concurrency (neither takes the conversation options; in ask and chat -c continues).
OWN_FLAGS = {"serve": {"idle_stop"}, "bench": {"checkpoint", "forms", "concurrency"}, "batch": {"concurrency"}}


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
    settings = _typed(command, ctx)["engine"]
    assert {name: getattr(settings, name) for name in expected} == expected


def _typed(command, ctx) -> dict:
    """What the command function receives from the shared options of the parsed ``ctx``."""
    return _command_function(command).typed_values(ctx.params)


def test_server_and_model_are_the_remote_pair():
    cmd = _click_command("ask")
    argv = ["-s", "http://a:1,http://b:2", "-m", "r1", "--think-budget", "9"]
    typed = _typed("ask", cmd.make_context("ask", argv, resilient_parsing=True))
    remote = typed["engine"]
    assert remote.servers == ("http://a:1", "http://b:2") and remote.served_model == "r1" and remote.remote
    assert typed["thinking"].budget == 9 and remote.thinking_processor  # derived from the reasoning options
    local = _typed("ask", cmd.make_context("ask", ["-m", "/data/r1"], resilient_parsing=True))["engine"]
    assert local.model == "/data/r1" and local.served_model is None and not local.remote
    assert not local.thinking_processor


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


def test_every_engine_setting_has_one_shared_option():
    settable = set(EngineSettings.engine_fields()) - {"thinking_processor"}  # the reasoning options load it
    assert settable <= {o.name for o in options.ENGINE}


@pytest.mark.parametrize("command", TAKERS)
def test_engine_options_come_from_the_shared_declaration(command):
    params = {p.name: p for p in _click_command(command).params}
    taken = {o.name: o for o in _command_function(command).shared_options}
    assert set(params) & set(options.BY_NAME) <= set(taken)  # a shared name is the shared option
    checked = 0
    for name in EngineSettings.engine_fields():
        if name not in params:
            assert command not in DERIVED or name in DERIVED[command], name
            continue
        assert name in taken, f"`stepaudio {command}` declares --{name.replace('_', '-')} itself"
        declared, mine, param = options.BY_NAME[name], taken[name], params[name]
        if param.param_type_name == "option":
            assert set(param.opts) == set(declared.flags or ["--" + name.replace("_", "-")])
        assert param.envvar == declared.envvar == "STEPAUDIO_" + name.upper()
        assert (param.help, param.rich_help_panel, param.hidden) == (
            mine.help,
            mine.panel,
            bool(mine.extras.get("hidden")),
        )
        checked += 1
    assert checked >= 3


def _every_param():
    import typer.main

    for name, cmd in typer.main.get_command(app).commands.items():
        for sub, c in getattr(cmd, "commands", {name: cmd}).items():
            yield sub, c, c.params


def test_an_env_var_has_one_meaning():
    """Each variable is declared once: a shared option's, wherever a command takes it (in a variant
    or as its own argument for the same thing: download's REPO_ID, bench's --model), or one
    command option's, named alike wherever it is."""
    same_thing = {("download", "repo_id"): "model", ("bench", "checkpoint"): "model"}
    meanings: dict[str, set[str]] = {}
    for command, cmd, params in _every_param():
        shared = {o.name for o in getattr(cmd.callback, "shared_options", ())}
        for p in params:
            if isinstance(p.envvar, str):
                meaning = same_thing.get((command, p.name), p.name)
                if p.name in shared or meaning in options.BY_NAME:
                    assert p.envvar == options.BY_NAME[meaning].envvar, (command, p.name)
                else:
                    assert p.envvar not in {o.envvar for o in options.BY_NAME.values()}, (command, p.name)
                meanings.setdefault(p.envvar, set()).add(meaning)
    assert {env: m for env, m in meanings.items() if len(m) > 1} == {}
    assert meanings["STEPAUDIO_MODEL"] == {"model"} and meanings["STEPAUDIO_API_KEY"] == {"api_key"}


def test_own_options_under_a_shared_flag_are_few_and_named_apart():
    for command, cmd, params in _every_param():
        shared_flags = {f for o in options.BY_NAME.values() for f in o.flags or ["--" + o.name.replace("_", "-")]}
        taken = {o.name for o in getattr(cmd.callback, "shared_options", ())}
        reused = {p.name for p in params if p.name not in taken and set(p.opts) & shared_flags}
        if command in TAKERS:
            assert reused == OWN_FLAGS.get(command, set()), command


def test_engine_option_help_names_where_it_applies():
    """Every engine option says where it applies, in the README's words; none says in-process only
    (they shape the resident engine and serve alike)."""
    for o in options.ENGINE:
        if o.name in EngineSettings.engine_fields() and o.name != "model":
            for where in ("in-process", "the resident engine", "serve", "--server: set by the server"):
                assert where in o.help, (o.name, where)
    for command, _cmd, params in _every_param():
        for p in params:
            if p.name in EngineSettings.engine_fields() or p.name == "keep_alive":
                assert "(in-process)" not in (p.help or ""), (command, p.name)
    assert "the resident engine, serve" in options.MODEL.help


def _one(cmd) -> typer.Typer:
    one = typer.Typer()
    one.command()(cmd)
    one.callback()(lambda: None)  # a group, so the command keeps its name
    return one


def test_a_shared_option_is_one_declaration():
    """A group's options appear on every command that takes it, with their env vars, checks and help,
    and reach the command as typed values."""
    from stepaudio_cli.request import Thinking

    seen = {}

    @options.takes(options.REASONING, options.JSON)
    def cmd(
        ctx: typer.Context, tag: Annotated[str, typer.Option("--tag")] = "", *, thinking: Thinking, json_output: bool
    ) -> None:
        seen.update(tag=tag, thinking=thinking, json_output=json_output)

    runner = CliRunner()
    one = _one(cmd)
    assert runner.invoke(one, ["cmd", "--think-budget", "5", "--json", "--tag", "x"]).exit_code == 0
    assert seen == {"tag": "x", "thinking": Thinking(budget=5), "json_output": True}
    assert runner.invoke(one, ["cmd"], env={"STEPAUDIO_THINK_BUDGET": "7"}).exit_code == 0
    assert seen["thinking"] == Thinking(budget=7) and seen["json_output"] is False
    assert runner.invoke(one, ["cmd", "--min-think", "0"]).exit_code == 2  # min=1
    with pytest.raises(ValueError, match="no shared option jsn"):
        options.takes(options.JSON, only=("jsn",))  # a typo takes nothing silently


def test_one_name_one_meaning_is_checked_when_the_app_is_built():
    """A command's own parameter named like a shared option, or with a flag of one it takes, would
    shadow it: refused as the command is decorated, like options nothing reads."""
    with pytest.raises(ValueError, match="declares --keep-alive itself"):

        @options.takes(options.JSON)
        def own_name(ctx: typer.Context, keep_alive: Annotated[str, typer.Option()] = "", *, json_output: bool):
            pass

    with pytest.raises(ValueError, match="declares --keep-alive itself"):

        @options.takes(options.ENGINE, leave_out=("keep_alive",))
        def argument(ctx: typer.Context, keep_alive: Annotated[str, typer.Argument()] = "", *, engine) -> None:
            pass

    with pytest.raises(ValueError, match="idle declares --json, the flag of the shared json_output"):

        @options.takes(options.JSON)
        def own_flag(ctx: typer.Context, idle: Annotated[bool, typer.Option("--json")] = False, *, json_output: bool):
            pass

    with pytest.raises(ValueError, match="`sampling` is built from options it does not take"):

        @options.takes(options.JSON)
        def missing(ctx: typer.Context, *, sampling, json_output: bool) -> None:
            pass

    with pytest.raises(ValueError, match="takes --json but receives no typed value"):

        @options.takes(options.JSON)
        def unread(ctx: typer.Context) -> None:
            pass

    with pytest.raises(ValueError, match="a variant cannot change flags"):
        options.MODEL.vary(flags=("--m",))


def test_serve_keeps_its_flags_with_the_shared_declarations():
    params = {p.name: p for p in _click_command("serve").params}
    assert params["model"].param_type_name == "argument" and params["model"].envvar == "STEPAUDIO_MODEL"
    assert params["max_model_len"].default is None and params["max_model_len"].opts == ["--max-model-len"]
    assert params["api_key"].opts == ["--api-key"] and params["api_key"].envvar == "STEPAUDIO_API_KEY"
    assert params["idle_stop"].opts == ["--keep-alive"] and params["idle_stop"].envvar is None
    assert "keep_alive" not in params  # how long `ask` keeps its engine: not serve's
    typed = _typed("serve", _click_command("serve").make_context("serve", ["/m", "--api-key", "k"]))
    assert (typed["engine"].model, typed["engine"].max_model_len, typed["engine"].api_key) == ("/m", None, "k")
