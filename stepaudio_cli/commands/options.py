"""Options shared by the commands, each declared once, the root Terminal, and the settings they build.

A shared option is one :class:`Shared` record, made by :func:`shared` (its env var is
``STEPAUDIO_`` + its name); the records come in groups (:data:`SAMPLING`, :data:`REASONING`,
:data:`REMOTE`, :data:`ENGINE`, :data:`LONG_RECORDINGS`, :data:`JSON`, :data:`URLS`), and a command takes groups
with :func:`takes`. The command declares only its own options and reads the shared ones through
``ctx.params`` (:func:`engine_settings`, :func:`sampling`, :func:`thinking`, :func:`windowing`).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable
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
    DEFAULT_TEMPERATURE,
    DEFAULT_TIMEOUT,
    DEFAULT_TOP_P,
    GPU_MEMORY_FRACTION,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
)
from stepaudio_cli.terminal import Terminal

# Help panels.
ENGINE_PANEL = "Engine"
SAMPLING_PANEL = "Sampling"
THINK_PANEL = "Reasoning length"
DIST_PANEL = "Multi-GPU / multi-node"
LONG_PANEL = "Long recordings"
# Weight sizes for help texts, from the one weight arithmetic (checkpoint.weight_bytes).
BF16_GB, FP8_GB = (round(weight_bytes(R1_TEXT_SIZES, q, audio=R1_AUDIO_SIZES) / 1e9) for q in (None, "fp8"))


@dataclasses.dataclass(frozen=True)
class Shared:
    """One option several commands take: its parameter name (the settings field it feeds), type,
    default, help, help panel, flags (none: ``--`` + the name), env var, and click's extras
    (``min``, ``max``, ``hidden``, ``metavar``)."""

    name: str
    type: object
    default: object
    help: str
    panel: str | None
    flags: tuple[str, ...]
    envvar: str | None
    extras: dict = dataclasses.field(compare=False)

    def parameter(self) -> inspect.Parameter:
        """The parameter Typer reads, as if the command had declared it."""
        info = typer.Option(*self.flags, envvar=self.envvar, help=self.help, rich_help_panel=self.panel, **self.extras)
        return inspect.Parameter(
            self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default, annotation=Annotated[self.type, info]
        )


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
        f"Local path or hub repo id (in-process; default {DEFAULT_MODEL}), or the served model name with --server.",
        "--model",
        "-m",
        panel=ENGINE_PANEL,
    ),
    shared(
        "max_model_len",
        int,
        DEFAULT_MAX_MODEL_LEN,
        "Context length in tokens (in-process).",
        panel=ENGINE_PANEL,
        min=1024,
    ),
    shared(
        "max_num_seqs",
        int,
        DEFAULT_MAX_NUM_SEQS,
        "Requests batched at once (in-process).",
        panel=ENGINE_PANEL,
        min=1,
    ),
    shared(
        "tensor_parallel_size",
        int | None,
        None,
        "GPUs to shard each pipeline stage over (default: all visible GPUs).",
        "--tensor-parallel-size",
        "-tp",
        panel=ENGINE_PANEL,
        min=1,
    ),
    shared(
        "pipeline_parallel_size",
        int,
        1,
        "Pipeline stages (e.g. one per node).",
        "--pipeline-parallel-size",
        "-pp",
        panel=DIST_PANEL,
        min=1,
    ),
    shared(
        "distributed_executor_backend",
        str | None,
        None,
        "vLLM executor: mp (one node) or ray (several nodes).",
        panel=DIST_PANEL,
    ),
    shared(
        "gpu_memory_utilization",
        float | None,
        None,
        f"Fraction of GPU memory for vLLM (default {GPU_MEMORY_FRACTION}; on CPU, of RAM: {CPU_MEMORY_FRACTION}).",
        panel=ENGINE_PANEL,
        min=0.05,
        max=1.0,
    ),
    shared("dtype", str, "auto", "Weights dtype: auto, bfloat16, float16, float32.", panel=ENGINE_PANEL),
    shared(
        "quantization",
        str | None,
        None,
        f"Quantize the weights as they load: {', '.join(QUANTIZATIONS)} (about {FP8_GB} GB instead of "
        f"{BF16_GB}; Hopper/Ada GPUs).",
        panel=ENGINE_PANEL,
    ),
    shared(
        "kv_cache_dtype",
        str,
        "auto",
        f"KV cache dtype: {', '.join(KV_CACHE_DTYPES)} (fp8 holds twice the tokens; Hopper/Ada GPUs; "
        "can cost accuracy).",
        panel=ENGINE_PANEL,
    ),
    shared(
        "load_format",
        str,
        "auto",
        "vLLM load format; 'dummy' builds random weights from config.json (GPU checks without the 67 GB).",
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
URLS = (
    shared(
        "no_cache",
        bool,
        False,
        "Fetch http(s) URLs again instead of reusing (and revalidating) the cached copy.",
        "--no-cache",
    ),
)
GROUPS = (SAMPLING, REASONING, REMOTE, ENGINE, LONG_RECORDINGS, JSON, URLS)
#: Every shared option by its parameter name.
BY_NAME = {o.name: o for group in GROUPS for o in group}


def takes(*groups: Iterable[Shared], leave_out: Iterable[str] = (), only: Iterable[str] | None = None):
    """A command that takes the options of ``groups`` (those named in ``only``, when given; not those
    in ``leave_out``) besides its own. A parameter the command declares itself wins over a shared
    one of the same name. The command is called with its own parameters only; it reads the shared
    ones through ``ctx.params``. In ``--help`` its own panels come first, then the groups' panels.
    The wrapper's ``shared_options`` lists the records it added."""
    chosen = [o for group in groups for o in group]
    left_out, picked = set(leave_out), None if only is None else set(only)
    unknown = (left_out | (picked or set())) - {o.name for o in chosen}
    if unknown:  # a typo would silently take or drop an option
        raise ValueError(f"no shared option {', '.join(sorted(unknown))} in these groups")
    chosen = [o for o in chosen if o.name not in left_out and (picked is None or o.name in picked)]

    def decorate(fn: Callable) -> Callable:
        own = inspect.signature(fn, eval_str=True)
        added = tuple(o for o in chosen if o.name not in own.parameters)
        shared_names = frozenset(o.name for o in added)
        params = _panel_by_panel(list(own.parameters.values()), [o.parameter() for o in added])

        @functools.wraps(fn)
        def command(*args, **kwargs):
            return fn(*args, **{k: v for k, v in kwargs.items() if k not in shared_names})

        command.__signature__ = own.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.shared_options = added
        return command

    return decorate


def _panel_by_panel(own: list[inspect.Parameter], added: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """``own`` then ``added``, options ordered by help panel (Typer shows panels in the order they
    first come): the default panel, the command's own panels, then the groups' ones. Everything
    after the first parameter (``ctx``) becomes keyword-only: Typer passes them all by name."""
    theirs = [_panel(p) for p in added]
    mine = [_panel(p) for p in own if _is_option(p) and _panel(p) not in theirs]
    panels = list(dict.fromkeys([None, *mine, *theirs]))
    first, rest = own[:1], own[1:] + added
    rest.sort(key=lambda p: panels.index(_panel(p)) if _is_option(p) else -1)
    return first + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]


def _is_option(p: inspect.Parameter) -> bool:
    return any(isinstance(m, typer.models.OptionInfo) for m in getattr(p.annotation, "__metadata__", ()))


def _panel(p: inspect.Parameter) -> str | None:
    return next((getattr(m, "rich_help_panel", None) for m in getattr(p.annotation, "__metadata__", ())), None)


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


def windowing(ctx: typer.Context):
    """How a command (ask, batch) answers audio longer than one request holds, from its options."""
    from stepaudio_cli.windows import Windowing

    return Windowing.from_options(ctx.params["window"], ctx.params["no_window"])


def url_fetching(ctx: typer.Context):
    """How a command (ask, batch, mcp) fetches audio given as http(s) URLs, from its options."""
    from stepaudio_cli.url_audio import UrlFetching

    return UrlFetching(use_cache=not ctx.params["no_cache"])
