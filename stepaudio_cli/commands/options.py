"""Options shared by the commands, the root Terminal, and the engine settings they build."""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.defaults import DEFAULT_MODEL, DEFAULT_TIMEOUT, GPU_MEMORY_FRACTION, CPU_MEMORY_FRACTION
from stepaudio_cli.terminal import Terminal

ENGINE = "Engine"
SAMPLING = "Sampling"

ServerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        "-s",
        envvar="STEPAUDIO_SERVER",
        help="URL of an OpenAI-compatible server (e.g. http://127.0.0.1:9999); else a local engine (see --keep-alive).",
        rich_help_panel=ENGINE,
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option("--api-key", envvar="STEPAUDIO_API_KEY", help="API key for --server.", rich_help_panel=ENGINE),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar="STEPAUDIO_MODEL",
        help=f"Local path or hub repo id (in-process; default {DEFAULT_MODEL}), or the served model name with --server.",
        rich_help_panel=ENGINE,
    ),
]
MaxModelLenOpt = Annotated[
    int,
    typer.Option(envvar="STEPAUDIO_MAX_MODEL_LEN", min=1024, help="Context length (in-process).", rich_help_panel=ENGINE),
]
TPOpt = Annotated[
    int | None,
    typer.Option(
        "--tensor-parallel-size",
        "-tp",
        envvar="STEPAUDIO_TENSOR_PARALLEL_SIZE",
        min=1,
        help="GPUs to shard over (in-process; default: all visible GPUs).",
        rich_help_panel=ENGINE,
    ),
]
GpuMemOpt = Annotated[
    float | None,
    typer.Option(
        envvar="STEPAUDIO_GPU_MEMORY_UTILIZATION", min=0.05, max=1.0, help=f"Fraction of GPU memory for vLLM (default {GPU_MEMORY_FRACTION}; on CPU, of RAM: {CPU_MEMORY_FRACTION}).",
        rich_help_panel=ENGINE,
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(envvar="STEPAUDIO_DTYPE", help="Weights dtype: auto, bfloat16, float16, float32.", rich_help_panel=ENGINE),
]
QuantOpt = Annotated[
    str | None,
    typer.Option(
        envvar="STEPAUDIO_QUANTIZATION",
        help="Quantize the weights as they load: fp8 (about 35 GB instead of 66; Hopper/Ada GPUs).",
        rich_help_panel=ENGINE,
    ),
]
LoadFormatOpt = Annotated[
    str,
    typer.Option(envvar="STEPAUDIO_LOAD_FORMAT", hidden=True,
                 help="vLLM load format; 'dummy' builds random weights from config.json (GPU checks without the 67 GB)."),
]
TemperatureOpt = Annotated[
    float, typer.Option(envvar="STEPAUDIO_TEMPERATURE", min=0.0, help="Sampling temperature.", rich_help_panel=SAMPLING)
]
TopPOpt = Annotated[
    float, typer.Option(envvar="STEPAUDIO_TOP_P", min=0.0, max=1.0, help="Nucleus sampling.", rich_help_panel=SAMPLING)
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        envvar="STEPAUDIO_MAX_TOKENS", min=1,
        help="Most tokens to generate (reasoning + answer); default: all the context leaves after the prompt.",
        rich_help_panel=SAMPLING,
    ),
]
SeedOpt = Annotated[
    int | None, typer.Option(envvar="STEPAUDIO_SEED", help="Sampling seed.", rich_help_panel=SAMPLING)
]
THINK = "Reasoning length"
ThinkBudgetOpt = Annotated[
    int | None,
    typer.Option(
        envvar="STEPAUDIO_THINK_BUDGET", min=0, help="Most reasoning tokens; then </think> is forced and the model answers.",
        rich_help_panel=THINK,
    ),
]
MinThinkOpt = Annotated[
    int | None,
    typer.Option(envvar="STEPAUDIO_MIN_THINK", min=1, help="Hold </think> back until this many reasoning tokens exist.",
                 rich_help_panel=THINK),
]
EffortOpt = Annotated[
    str | None,
    typer.Option(
        envvar="STEPAUDIO_EFFORT", help="Preset: low (budget 256), medium (budget 1024), high (at least 2048).",
        rich_help_panel=THINK,
    ),
]
NoThinkOpt = Annotated[
    bool,
    typer.Option("--no-think", envvar="STEPAUDIO_NO_THINK", help="Answer directly, with an empty reasoning block.",
                 rich_help_panel=THINK),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", envvar="STEPAUDIO_SYSTEM", help="System prompt.", rich_help_panel=SAMPLING)
]


TimeoutOpt = Annotated[
    float,
    typer.Option(envvar="STEPAUDIO_TIMEOUT", min=1.0,
                 help="Seconds a server may stay silent mid-request before it counts as hung (--server).",
                 rich_help_panel=ENGINE),
]
KeepAliveOpt = Annotated[
    str,
    typer.Option(envvar="STEPAUDIO_KEEP_ALIVE", rich_help_panel=ENGINE,
                 help="Without --server: keep the model loaded this long after use (e.g. 5m, 1h, forever); "
                      "0 runs it in-process and leaves nothing running. `stepaudio ps` lists, `stepaudio stop` frees."),
]


def terminal(ctx: typer.Context) -> Terminal:
    """The one Terminal, made at the root of the command line and handed down as ``ctx.obj``."""
    root = ctx.find_root()
    if not isinstance(root.obj, Terminal):  # a command invoked on its own (no root callback)
        root.obj = Terminal()
    return root.obj


def engine_settings(
    server: list[str] | None,
    api_key: str | None,
    model: str | None,
    *,
    max_model_len: int,
    tensor_parallel_size: int | None,
    gpu_memory_utilization: float | None,
    dtype: str,
    quantization: str | None,
    load_format: str,
    max_num_seqs: int,
    thinking_processor: bool,
    timeout: float = DEFAULT_TIMEOUT,
    wait_server: float = 0.0,
):
    """The engine options every command shares, as the engines package's typed settings."""
    from stepaudio_cli.engines.settings import EngineSettings

    servers = EngineSettings.split_servers(server)
    return EngineSettings(
        servers=servers, api_key=api_key, model=model or DEFAULT_MODEL, served_model=model if servers else None,
        timeout=timeout, wait_server=wait_server, max_model_len=max_model_len,
        tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
        max_num_seqs=max_num_seqs, quantization=quantization, thinking_processor=thinking_processor,
        load_format=load_format,
    )


def sampling(temperature: float, top_p: float, max_tokens: int | None, seed: int | None):
    from stepaudio_cli.request import Sampling

    return Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)


def thinking(think_budget: int | None, min_think: int | None, effort: str | None, no_think: bool):
    from stepaudio_cli.request import Thinking

    return Thinking.from_options(think_budget, min_think, effort, no_think)
