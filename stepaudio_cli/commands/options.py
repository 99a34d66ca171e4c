"""Options shared by the commands, the root Terminal, and the engine settings they build."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer

from stepaudio_cli.checkpoint import R1_AUDIO_SIZES, R1_TEXT_SIZES, weight_bytes
from stepaudio_cli.defaults import (
    CPU_MEMORY_FRACTION,
    DEFAULT_MODEL,
    GPU_MEMORY_FRACTION,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
)
from stepaudio_cli.terminal import Terminal

ENGINE = "Engine"
# Weight sizes for help texts, from the one weight arithmetic (checkpoint.weight_bytes).
BF16_GB, FP8_GB = (round(weight_bytes(R1_TEXT_SIZES, q, audio=R1_AUDIO_SIZES) / 1e9) for q in (None, "fp8"))
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
    typer.Option(
        "--api-key",
        envvar="STEPAUDIO_API_KEY",
        rich_help_panel=ENGINE,
        help="API key for --server; prefer STEPAUDIO_API_KEY: on the command line it is visible to other users.",
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        envvar="STEPAUDIO_MODEL",
        help=f"Local path or hub repo id (in-process; default {DEFAULT_MODEL}), "
        "or the served model name with --server.",
        rich_help_panel=ENGINE,
    ),
]
MaxModelLenOpt = Annotated[
    int,
    typer.Option(
        envvar="STEPAUDIO_MAX_MODEL_LEN",
        min=1024,
        help="Context length in tokens (in-process).",
        rich_help_panel=ENGINE,
    ),
]
MaxNumSeqsOpt = Annotated[
    int,
    typer.Option(
        envvar="STEPAUDIO_MAX_NUM_SEQS", min=1, help="Requests batched at once (in-process).", rich_help_panel=ENGINE
    ),
]
DIST = "Multi-GPU / multi-node"
PPOpt = Annotated[
    int,
    typer.Option(
        "--pipeline-parallel-size",
        "-pp",
        envvar="STEPAUDIO_PIPELINE_PARALLEL_SIZE",
        min=1,
        help="Pipeline stages (e.g. one per node).",
        rich_help_panel=DIST,
    ),
]
ExecutorOpt = Annotated[
    str | None,
    typer.Option(
        envvar="STEPAUDIO_DISTRIBUTED_EXECUTOR_BACKEND",
        help="vLLM executor: mp (one node) or ray (several nodes).",
        rich_help_panel=DIST,
    ),
]
TPOpt = Annotated[
    int | None,
    typer.Option(
        "--tensor-parallel-size",
        "-tp",
        envvar="STEPAUDIO_TENSOR_PARALLEL_SIZE",
        min=1,
        help="GPUs to shard each pipeline stage over (default: all visible GPUs).",
        rich_help_panel=ENGINE,
    ),
]
GpuMemOpt = Annotated[
    float | None,
    typer.Option(
        envvar="STEPAUDIO_GPU_MEMORY_UTILIZATION",
        min=0.05,
        max=1.0,
        help=f"Fraction of GPU memory for vLLM (default {GPU_MEMORY_FRACTION}; on CPU, of RAM: {CPU_MEMORY_FRACTION}).",
        rich_help_panel=ENGINE,
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        envvar="STEPAUDIO_DTYPE", help="Weights dtype: auto, bfloat16, float16, float32.", rich_help_panel=ENGINE
    ),
]
QuantOpt = Annotated[
    str | None,
    typer.Option(
        envvar="STEPAUDIO_QUANTIZATION",
        help=f"Quantize the weights as they load: {', '.join(QUANTIZATIONS)} (about {FP8_GB} GB instead of "
        f"{BF16_GB}; Hopper/Ada GPUs).",
        rich_help_panel=ENGINE,
    ),
]
KvCacheDtypeOpt = Annotated[
    str,
    typer.Option(
        envvar="STEPAUDIO_KV_CACHE_DTYPE",
        help=f"KV cache dtype: {', '.join(KV_CACHE_DTYPES)} (fp8 holds twice the tokens; Hopper/Ada GPUs; "
        "can cost accuracy).",
        rich_help_panel=ENGINE,
    ),
]
LoadFormatOpt = Annotated[
    str,
    typer.Option(
        envvar="STEPAUDIO_LOAD_FORMAT",
        hidden=True,
        help="vLLM load format; 'dummy' builds random weights from config.json (GPU checks without the 67 GB).",
    ),
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
        envvar="STEPAUDIO_MAX_TOKENS",
        min=1,
        help="Most tokens to generate (reasoning + answer); default: all the context leaves after the prompt.",
        rich_help_panel=SAMPLING,
    ),
]
SeedOpt = Annotated[int | None, typer.Option(envvar="STEPAUDIO_SEED", help="Sampling seed.", rich_help_panel=SAMPLING)]
THINK = "Reasoning length"
ThinkBudgetOpt = Annotated[
    int | None,
    typer.Option(
        envvar="STEPAUDIO_THINK_BUDGET",
        min=0,
        help="Most reasoning tokens; then </think> is forced and the model answers.",
        rich_help_panel=THINK,
    ),
]
MinThinkOpt = Annotated[
    int | None,
    typer.Option(
        envvar="STEPAUDIO_MIN_THINK",
        min=1,
        help="Hold </think> back until this many reasoning tokens exist.",
        rich_help_panel=THINK,
    ),
]
EffortOpt = Annotated[
    str | None,
    typer.Option(
        envvar="STEPAUDIO_EFFORT",
        help="Preset: low (budget 256), medium (budget 1024), high (at least 2048).",
        rich_help_panel=THINK,
    ),
]
NoThinkOpt = Annotated[
    bool,
    typer.Option(
        "--no-think",
        envvar="STEPAUDIO_NO_THINK",
        help="Answer directly, with an empty reasoning block.",
        rich_help_panel=THINK,
    ),
]
SystemOpt = Annotated[
    str | None, typer.Option("--system", envvar="STEPAUDIO_SYSTEM", help="System prompt.", rich_help_panel=SAMPLING)
]


JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]

TimeoutOpt = Annotated[
    float,
    typer.Option(
        envvar="STEPAUDIO_TIMEOUT",
        min=1.0,
        help="Seconds a server may stay silent mid-request before it counts as hung (--server).",
        rich_help_panel=ENGINE,
    ),
]
KeepAliveOpt = Annotated[
    str,
    typer.Option(
        envvar="STEPAUDIO_KEEP_ALIVE",
        rich_help_panel=ENGINE,
        help="Without --server: keep the model loaded this long after use (e.g. 5m, 1h, forever); "
        "0 runs it in-process and leaves nothing running. `stepaudio ps` lists, `stepaudio stop` frees.",
    ),
]


def terminal(ctx: typer.Context) -> Terminal:
    """The one Terminal, made at the root of the command line and handed down as ``ctx.obj``."""
    root = ctx.find_root()
    if not isinstance(root.obj, Terminal):  # a command invoked on its own (no root callback)
        root.obj = Terminal()
    return root.obj


def engine_settings(ctx: typer.Context, **fixed):
    """The engine settings of a command, from its parsed options: every parameter named like an
    :class:`EngineSettings` field goes to that field (``server`` and ``model`` are read as the
    remote/in-process pair). ``fixed`` gives fields the command does not take as options."""
    from stepaudio_cli.engines.settings import EngineSettings

    params = {**ctx.params, **fixed}
    servers = EngineSettings.split_servers(params.get("server"))
    model = params.get("model")
    names = {f.name for f in dataclasses.fields(EngineSettings)} - {"servers", "model", "served_model"}
    given = {k: v for k, v in params.items() if k in names}
    return EngineSettings(
        servers=servers,
        model=(None if servers else model) or DEFAULT_MODEL,
        served_model=model if servers else None,
        **given,
    )


def sampling(ctx: typer.Context):
    """The sampling settings of a command (ask, batch), from its parsed options."""
    from stepaudio_cli.request import Sampling

    p = ctx.params
    return Sampling(temperature=p["temperature"], top_p=p["top_p"], max_tokens=p["max_tokens"], seed=p["seed"])


def thinking(ctx: typer.Context):
    """The reasoning-length settings of a command (ask, batch), from its parsed options."""
    from stepaudio_cli.request import Thinking

    p = ctx.params
    return Thinking.from_options(p["think_budget"], p["min_think"], p["effort"], p["no_think"])


# --- long recordings (windows.py) -------------------------------------------------------------
LONG = "Long recordings"
WindowOpt = Annotated[
    str | None,
    typer.Option(
        "--window",
        envvar="STEPAUDIO_WINDOW",
        metavar="DURATION",
        help="Window length for audio longer than one request holds, e.g. 20m (default: what fits the context).",
        rich_help_panel=LONG,
    ),
]
NoWindowOpt = Annotated[
    bool,
    typer.Option(
        "--no-window",
        envvar="STEPAUDIO_NO_WINDOW",
        help="Refuse audio longer than one request holds instead of answering it in windows.",
        rich_help_panel=LONG,
    ),
]


def windowing(ctx: typer.Context):
    """How a command (ask, batch) answers audio longer than one request holds, from its options."""
    from stepaudio_cli.windows import Windowing

    return Windowing.from_options(ctx.params["window"], ctx.params["no_window"])
