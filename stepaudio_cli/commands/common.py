"""Options and plumbing shared by the commands (engine choice, error handling)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated

import typer

from stepaudio_cli.errors import UserError  # noqa: F401 - re-exported for commands
from stepaudio_cli.defaults import DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_TOKENS, DEFAULT_MODEL
from stepaudio_cli.terminal import Terminal

ENGINE = "Engine"
SAMPLING = "Sampling"

ServerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--server",
        "-s",
        envvar="STEPAUDIO_SERVER",
        help="URL of an OpenAI-compatible server (e.g. http://127.0.0.1:9999). Without it the model runs in-process.",
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
        envvar="STEPAUDIO_GPU_MEMORY_UTILIZATION", min=0.05, max=1.0, help="Fraction of GPU memory for vLLM (default 0.9; on CPU, of RAM: 0.3).",
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


@dataclass
class EngineSettings:
    servers: list[str] = field(default_factory=list)
    api_key: str | None = None
    model: str = DEFAULT_MODEL
    model_override: str | None = None  # served model name (remote)
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    max_num_seqs: int = 32
    quantization: str | None = None
    #: Load the reasoning-length logits processor (in-process). Only runs that limit the
    #: reasoning need it: with it loaded vLLM 0.26 falls back from its faster model runner.
    thinking_processor: bool = False
    load_format: str = "auto"

    @classmethod
    def from_options(
        cls,
        server: list[str] | None,
        api_key: str | None,
        model: str | None,
        max_model_len: int,
        tensor_parallel_size: int | None,
        gpu_memory_utilization: float | None,
        dtype: str,
        max_num_seqs: int = 32,
        *,
        quantization: str | None = None,
        thinking_processor: bool = False,
        load_format: str = "auto",
    ) -> EngineSettings:
        if quantization not in (None, "fp8"):
            raise UserError(f"--quantization must be fp8 (vLLM's online FP8), not {quantization!r}")
        servers = [u for s in (server or []) for u in s.split(",") if u.strip()]
        return cls(
            servers=servers,
            api_key=api_key,
            model=model or DEFAULT_MODEL,
            model_override=model if servers else None,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            max_num_seqs=max_num_seqs,
            quantization=quantization,
            thinking_processor=thinking_processor,
            load_format=load_format,
        )


def sampling(temperature: float, top_p: float, max_tokens: int | None, seed: int | None):
    from stepaudio_cli.prompt import Sampling

    return Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed)


def thinking(think_budget: int | None, min_think: int | None, effort: str | None, no_think: bool):
    from stepaudio_cli.prompt import Thinking

    return Thinking.from_options(think_budget, min_think, effort, no_think)


DEFAULTS = {"max_model_len": DEFAULT_MAX_MODEL_LEN, "max_tokens": DEFAULT_MAX_TOKENS}


@contextlib.contextmanager
def user_errors(term: Terminal) -> Iterator[None]:
    """Turn UserError into one line on stderr + its exit code, Ctrl-C into exit 130."""
    try:
        yield
    except UserError as e:
        term.error(e.message)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        term.err.print()
        term.error("interrupted")
        raise typer.Exit(130) from None


def run(coro) -> object:
    """asyncio.run, with Ctrl-C surfacing as KeyboardInterrupt after tasks were cancelled."""
    return asyncio.run(coro)
