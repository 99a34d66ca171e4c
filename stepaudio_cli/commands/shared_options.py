"""Every option several commands share, declared once: a :class:`Shared` record each, made by
:func:`shared` (its env var is ``STEPAUDIO_`` + its name), in groups (:data:`SAMPLING`,
:data:`REASONING`, :data:`REMOTE`, :data:`ENGINE`, :data:`LONG_RECORDINGS`, :data:`JSON`,
:data:`VIEW`, :data:`URLS`, :data:`CONVERSATION`) that a command takes with ``options.takes``; a
command may take a few in its own variant (:meth:`Shared.vary`)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Annotated

import typer

from stepaudio_cli.checkpoint import R1_AUDIO_SIZES, R1_TEXT_SIZES, weight_bytes
from stepaudio_cli.defaults import (
    CPU_MEMORY_FRACTION,
    DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_SLEEP_FOR,
    DEFAULT_TEMPERATURE,
    DEFAULT_TIMEOUT,
    DEFAULT_TOP_P,
    GPU_MEMORY_FRACTION,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
)

# Help panels.
ENGINE_PANEL = "Engine"
SAMPLING_PANEL = "Sampling"
THINK_PANEL = "Reasoning length"
DIST_PANEL = "Multi-GPU / multi-node"
LONG_PANEL = "Long recordings"
# Weight sizes for help texts, from the one weight arithmetic (checkpoint.weight_bytes).
BF16_GB, FP8_GB = (round(weight_bytes(R1_TEXT_SIZES, q, audio=R1_AUDIO_SIZES) / 1e9) for q in (None, "fp8"))


# Where the engine options apply, in the README's words.
WHERE = "in-process, the resident engine, serve; --server: set by the server"


@dataclasses.dataclass(frozen=True)
class Shared:
    """One option several commands take: its parameter name (the typed value it feeds), type,
    default, help, help panel, flags (none: ``--`` + the name), env var, and click's extras
    (``min``, ``max``, ``hidden``, ``metavar``); ``argument``: a command's positional argument."""

    name: str
    type: object
    default: object
    help: str
    panel: str | None
    flags: tuple[str, ...]
    envvar: str | None
    extras: dict = dataclasses.field(compare=False)
    argument: bool = False

    def parameter(self) -> inspect.Parameter:
        """The parameter Typer reads, as if the command had declared it."""
        if self.argument:
            info = typer.Argument(envvar=self.envvar, help=self.help, rich_help_panel=self.panel, **self.extras)
        else:
            info = typer.Option(
                *self.flags, envvar=self.envvar, help=self.help, rich_help_panel=self.panel, **self.extras
            )
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=Annotated[self.type, info]
        )

    def vary(self, **changes) -> Shared:
        """This option as one command takes it, with its own ``default``, ``type``, ``help`` or
        ``panel``, or as an ``argument``; its name, flags and env var stay the declaration's."""
        unknown = set(changes) - {"default", "type", "help", "panel", "argument"}
        if unknown:
            raise ValueError(f"--{self.name.replace('_', '-')}: a variant cannot change {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def shared(name: str, type_: object, default: object, help: str, *flags: str, panel=None, env=True, **extras) -> Shared:
    """A shared option; its env var is ``STEPAUDIO_`` + ``name`` in capitals (``env=False``: none)."""
    return Shared(name, type_, default, help, panel, flags, f"STEPAUDIO_{name.upper()}" if env else None, extras)


SAMPLING = (
    shared("system", str | None, None, "System prompt.", "--system", panel=SAMPLING_PANEL),
    shared("temperature", float, DEFAULT_TEMPERATURE, "Sampling temperature.", panel=SAMPLING_PANEL, min=0.0),
    shared("top_p", float, DEFAULT_TOP_P, "Nucleus sampling.", panel=SAMPLING_PANEL, min=0.0, max=1.0),
    shared(
        "max_tokens",
        int | None,
        DEFAULT_MAX_TOKENS,
        "Most tokens to generate (reasoning + answer); default: all the context leaves after the prompt.",
        panel=SAMPLING_PANEL,
        min=1,
    ),
    shared("seed", int | None, None, "Sampling seed.", panel=SAMPLING_PANEL),
)
REASONING = (
    shared(
        "think_budget",
        int | None,
        None,
        "Most reasoning tokens; then </think> is forced and the model answers.",
        panel=THINK_PANEL,
        min=0,
    ),
    shared(
        "min_think",
        int | None,
        None,
        "Hold </think> back until this many reasoning tokens exist.",
        panel=THINK_PANEL,
        min=1,
    ),
    shared(
        "effort",
        str | None,
        None,
        "Preset: low (budget 256), medium (budget 1024), high (at least 2048).",
        panel=THINK_PANEL,
    ),
    shared("no_think", bool, False, "Answer directly, with an empty reasoning block.", "--no-think", panel=THINK_PANEL),
)
REMOTE = (
    shared(
        "server",
        list[str] | None,
        None,
        "URL of an OpenAI-compatible server (e.g. http://127.0.0.1:9999); else a local engine (see --keep-alive).",
        "--server",
        "-s",
        panel=ENGINE_PANEL,
    ),
    shared(
        "api_key",
        str | None,
        None,
        "API key for --server; prefer STEPAUDIO_API_KEY: on the command line it is visible to other users.",
        "--api-key",
        panel=ENGINE_PANEL,
    ),
    shared(
        "timeout",
        float,
        DEFAULT_TIMEOUT,
        "Seconds a server may stay silent mid-request before it counts as hung (--server).",
        panel=ENGINE_PANEL,
        min=1.0,
    ),
)
# One option per EngineSettings field a user sets (tests/test_settings.py holds them to that).
ENGINE = (
    shared(
        "model",
        str | None,
        None,
        f"Local path or hub repo id (in-process, the resident engine, serve; default {DEFAULT_MODEL}), "
        "or the served model name with --server.",
        "--model",
        "-m",
        panel=ENGINE_PANEL,
    ),
    shared(
        "max_model_len",
        int,
        DEFAULT_MAX_MODEL_LEN,
        f"Context length in tokens ({WHERE}).",
        panel=ENGINE_PANEL,
        min=1024,
    ),
    shared(
        "max_num_seqs",
        int,
        DEFAULT_MAX_NUM_SEQS,
        f"Requests batched at once ({WHERE}).",
        panel=ENGINE_PANEL,
        min=1,
    ),
    shared(
        "tensor_parallel_size",
        int | None,
        None,
        f"GPUs to shard each pipeline stage over (default: all visible GPUs; {WHERE}).",
        "--tensor-parallel-size",
        "-tp",
        panel=ENGINE_PANEL,
        min=1,
    ),
    shared(
        "pipeline_parallel_size",
        int,
        1,
        f"Pipeline stages, e.g. one per node ({WHERE}).",
        "--pipeline-parallel-size",
        "-pp",
        panel=DIST_PANEL,
        min=1,
    ),
    shared(
        "distributed_executor_backend",
        str | None,
        None,
        f"vLLM executor: mp (one node) or ray (several nodes) ({WHERE}).",
        panel=DIST_PANEL,
    ),
    shared(
        "gpu_memory_utilization",
        float | None,
        None,
        f"Fraction of GPU memory for vLLM (default {GPU_MEMORY_FRACTION}; on CPU, of RAM: {CPU_MEMORY_FRACTION}; "
        f"{WHERE}).",
        panel=ENGINE_PANEL,
        min=0.05,
        max=1.0,
    ),
    shared("dtype", str, "auto", f"Weights dtype: auto, bfloat16, float16, float32 ({WHERE}).", panel=ENGINE_PANEL),
    shared(
        "quantization",
        str | None,
        None,
        f"Quantize the weights as they load: {', '.join(QUANTIZATIONS)} (about {FP8_GB} GB instead of "
        f"{BF16_GB}; Hopper/Ada GPUs; {WHERE}).",
        panel=ENGINE_PANEL,
    ),
    shared(
        "kv_cache_dtype",
        str,
        "auto",
        f"KV cache dtype: {', '.join(KV_CACHE_DTYPES)} (fp8 holds twice the tokens; Hopper/Ada GPUs; "
        f"can cost accuracy; {WHERE}).",
        panel=ENGINE_PANEL,
    ),
    shared(
        "load_format",
        str,
        "auto",
        f"vLLM load format; 'dummy' builds random weights from config.json (GPU checks without the 67 GB; {WHERE}).",
        hidden=True,
    ),
    shared(
        "keep_alive",
        str,
        DEFAULT_KEEP_ALIVE,
        "Without --server: keep the model loaded this long after use (e.g. 5m, 1h, forever); "
        "0 runs it in-process and leaves nothing running. `stepaudio ps` lists, `stepaudio stop` frees.",
        panel=ENGINE_PANEL,
    ),
    shared(
        "sleep_for",
        str,
        DEFAULT_SLEEP_FOR,
        "Without --server, on a GPU: once the keep-alive runs out, the engine this command starts sleeps this "
        "long (weights in host memory, GPU memory freed; the next question wakes it in seconds), then stops "
        "(0: stop at once; forever).",
        panel=ENGINE_PANEL,
    ),
)
LONG_RECORDINGS = (
    shared(
        "window",
        str | None,
        None,
        "Window length for audio longer than one request holds, e.g. 20m (default: what fits the context).",
        "--window",
        panel=LONG_PANEL,
        metavar="DURATION",
    ),
    shared(
        "no_window",
        bool,
        False,
        "Refuse audio longer than one request holds instead of answering it in windows.",
        "--no-window",
        panel=LONG_PANEL,
    ),
)
JSON = (shared("json_output", bool, False, "Print JSON instead of text.", "--json", env=False),)
VIEW = (shared("hide_reasoning", bool, False, "Do not show the reasoning.", "--hide-reasoning"),)
URLS = (
    shared(
        "no_cache",
        bool,
        False,
        "Fetch http(s) URLs again instead of reusing (and revalidating) the cached copy.",
        "--no-cache",
    ),
)
CONVERSATION_PANEL = "Conversations"
CONVERSATION = (
    shared(
        "continue_conversation",
        bool,
        False,
        "Continue the latest conversation: a follow-up question (audio optional; the earlier turns are sent again).",
        "--continue",
        "-c",
        panel=CONVERSATION_PANEL,
        env=False,
    ),
    shared(
        "conversation",
        str | None,
        None,
        "Continue this conversation (its id; `stepaudio logs` lists them).",
        "--conversation",
        panel=CONVERSATION_PANEL,
        env=False,
        metavar="ID",
    ),
    shared(
        "log",
        bool,
        True,
        "Log the question and answer to logs.db in the XDG data folder (`stepaudio logs`); "
        "conversations live there, so -c needs it.",
        "--log/--no-log",
        panel=CONVERSATION_PANEL,
    ),
)
GROUPS = (SAMPLING, REASONING, REMOTE, ENGINE, LONG_RECORDINGS, JSON, VIEW, URLS, CONVERSATION)
#: Every shared option by its parameter name.
BY_NAME = {o.name: o for group in GROUPS for o in group}
MODEL = BY_NAME["model"]  # commands whose own argument is a model read its env var too
