"""One path from a flag to vLLM: every engine-shaping setting has its option on the commands that
build an engine, reaches the typed settings by its name, and changes what vLLM is given."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

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
