"""What an engine session needs to know, typed, and the one translation of it into vLLM's
arguments (:func:`vllm_args`), shared by the in-process engine and ``serve``'s command line."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from stepaudio_cli.defaults import (
    CPU_MEMORY_FRACTION,
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    GPU_MEMORY_FRACTION,
    KV_CACHE_DTYPES,
    MAX_AUDIO_ITEMS,
    QUANTIZATIONS,
    SERVER_CONCURRENCY,
)
from stepaudio_cli.errors import UserError

#: The reasoning-length logits processor, as vLLM loads it by name.
THINKING_PROCESSOR = "stepaudio_cli.vllm_plugin.logits_processor:ThinkingLogitsProcessor"


def _engine(**kw):
    """A field that shapes the engine vLLM builds (its memory, its sharding, its numbers):
    two engines with the same such fields are interchangeable."""
    return field(metadata={"engine": True}, **kw)


@dataclass(frozen=True)
class EngineSettings:
    """Remote when ``servers`` is not empty, in-process otherwise."""

    servers: tuple[str, ...] = ()
    api_key: str | None = None
    served_model: str | None = None  # remote: the model name to ask for (default: the server's first)
    timeout: float = DEFAULT_TIMEOUT  # remote: seconds of silence before a server counts as hung
    wait_server: float = 0.0  # remote: how long to wait for a server to come back (0: fail at once)
    #: remote: the server runs this package's reasoning-length processor (a resident engine, or
    #: another server of ours), so --think-budget and --min-think go with the request, as in-process.
    server_thinking: bool = False
    model: str = _engine(default=DEFAULT_MODEL)  # in-process: path or repo id
    #: None: the largest context the KV cache holds, up to the model's maximum (serve's default).
    max_model_len: int | None = _engine(default=DEFAULT_MAX_MODEL_LEN)
    tensor_parallel_size: int | None = _engine(default=None)  # None: every visible GPU (per stage)
    pipeline_parallel_size: int = _engine(default=1)
    distributed_executor_backend: str | None = _engine(default=None)  # mp (one node) or ray (several)
    gpu_memory_utilization: float | None = _engine(default=None)  # None: 0.9 of a GPU, 0.3 of RAM on CPU
    dtype: str = _engine(default="auto")
    quantization: str | None = _engine(default=None)
    kv_cache_dtype: str = _engine(default="auto")
    max_num_seqs: int = _engine(default=DEFAULT_MAX_NUM_SEQS)
    #: Load the reasoning-length logits processor (in-process). Only runs that limit the
    #: reasoning need it: with it loaded vLLM 0.26 falls back from its faster model runner.
    thinking_processor: bool = _engine(default=False)
    load_format: str = _engine(default="auto")  # "dummy": random weights from config.json (GPU checks)

    def __post_init__(self) -> None:
        if self.quantization not in (None, *QUANTIZATIONS):
            raise UserError(f"--quantization must be {' or '.join(QUANTIZATIONS)}, not {self.quantization!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise UserError(
                f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {self.kv_cache_dtype!r}"
            )

    @staticmethod
    def split_servers(server: list[str] | None) -> tuple[str, ...]:
        """``--server`` values, each possibly a comma-separated list."""
        return tuple(u.strip() for s in (server or []) for u in s.split(",") if u.strip())

    @classmethod
    def engine_fields(cls) -> tuple[str, ...]:
        """The fields that shape an engine (what makes two engines interchangeable)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("engine"))

    @property
    def remote(self) -> bool:
        return bool(self.servers)

    def default_concurrency(self) -> int:
        """Requests worth keeping in flight: enough to fill every server's (or the engine's) batch."""
        return SERVER_CONCURRENCY * len(self.servers) if self.servers else 2 * self.max_num_seqs

    def starting_message(self) -> str:
        """What a spinner says while this engine starts."""
        if not self.servers:
            return f"Loading {self.model}"
        from stepaudio_cli.engines.remote import redact

        return redact(f"Connecting to {', '.join(self.servers)}")


#: vLLM's environment for every engine of ours (set unless the user set them):
#: - the KV-cache size vLLM profiled is kept per card, settings and vLLM release
#:   (``VLLM_CACHE_ROOT/startup_plan``): later starts skip the memory profiling (vLLM >= 0.26;
#:   older releases ignore the variable);
#: - the engine process is forked from vLLM's API server, which has imported vLLM already,
#:   instead of spawned to import it again (vLLM's server sets ``spawn`` for itself: 16 s of a
#:   49 s start on an H100). vLLM still spawns where fork is unsafe (CUDA initialised, Ray),
#:   and its library default, which the in-process engine uses, is fork too.
VLLM_ENVIRONMENT = {"VLLM_ENABLE_STARTUP_PLAN": "1", "VLLM_WORKER_MULTIPROC_METHOD": "fork"}


def vllm_cache_root() -> Path:
    """Where vLLM keeps what makes later starts faster (the compile cache, the startup plans):
    ``VLLM_CACHE_ROOT``, else ``$XDG_CACHE_HOME/vllm``, else ``~/.cache/vllm`` (vLLM's own rule)."""
    root = os.environ.get("VLLM_CACHE_ROOT")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vllm"


def vllm_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with :data:`VLLM_ENVIRONMENT` added where ``env`` does not set them (the user's
    value wins)."""
    return {**VLLM_ENVIRONMENT, **env}


def vllm_args(settings: EngineSettings, model_path: Path, n_gpus: int) -> dict[str, object]:
    """vLLM's engine arguments for ``settings`` (AsyncEngineArgs names), the model at
    ``model_path``, on ``n_gpus`` visible GPUs (0: vLLM's CPU backend)."""
    s = settings
    tp = s.tensor_parallel_size or max(n_gpus // s.pipeline_parallel_size, 1)
    if n_gpus and tp * s.pipeline_parallel_size > n_gpus and s.distributed_executor_backend != "ray":
        raise UserError(
            f"--tensor-parallel-size {tp} x --pipeline-parallel-size {s.pipeline_parallel_size} needs "
            f"{tp * s.pipeline_parallel_size} GPUs, but {n_gpus} are visible"
        )
    args = {
        "model": str(model_path),
        # -1: vLLM fits the context to the KV cache, up to the model's max_position_embeddings.
        "max_model_len": s.max_model_len or -1,
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "distributed_executor_backend": s.distributed_executor_backend,
        "gpu_memory_utilization": s.gpu_memory_utilization or (GPU_MEMORY_FRACTION if n_gpus else CPU_MEMORY_FRACTION),
        "dtype": s.dtype,
        "quantization": s.quantization,
        "kv_cache_dtype": s.kv_cache_dtype,
        "max_num_seqs": s.max_num_seqs,
        "limit_mm_per_prompt": {"audio": MAX_AUDIO_ITEMS},
        # A follow-up's prompt starts with the previous turn's prompt and reply: the cache serves
        # them again, audio included (its block hashes cover the audio's content). vLLM's
        # default for this model, said outright so that every path (in-process, serve) has it.
        "enable_prefix_caching": True,
        "enforce_eager": not n_gpus,  # no CUDA graphs / compilation on the CPU backend
        "load_format": s.load_format,
        "logits_processors": [THINKING_PROCESSOR] if s.thinking_processor else None,
    }
    return {k: v for k, v in args.items() if v is not None}


def command_line_flags(args: dict[str, object]) -> list[str]:
    """vLLM's command-line flags for engine arguments from :func:`vllm_args` (its OpenAI server)."""
    flags: list[str] = []
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags
