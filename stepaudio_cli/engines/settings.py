"""What an engine session needs to know: typed, owned by the engines package."""

from __future__ import annotations

from dataclasses import dataclass

from stepaudio_cli.defaults import (
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_MAX_NUM_SEQS,
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    SERVER_CONCURRENCY,
)
from stepaudio_cli.errors import UserError


def check_kv_cache_dtype(value: str) -> None:
    if value not in KV_CACHE_DTYPES:
        raise UserError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, not {value!r}")


@dataclass(frozen=True)
class EngineSettings:
    """Remote when ``servers`` is not empty, in-process otherwise."""

    servers: tuple[str, ...] = ()
    api_key: str | None = None
    model: str = DEFAULT_MODEL  # in-process: path or repo id
    served_model: str | None = None  # remote: the model name to ask for (default: the server's first)
    timeout: float = DEFAULT_TIMEOUT  # remote: seconds of silence before a server counts as hung
    wait_server: float = 0.0  # remote: how long to wait for a server to come back (0: fail at once)
    max_model_len: int = DEFAULT_MAX_MODEL_LEN
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    dtype: str = "auto"
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS
    quantization: str | None = None
    #: Load the reasoning-length logits processor (in-process). Only runs that limit the
    #: reasoning need it: with it loaded vLLM 0.26 falls back from its faster model runner.
    thinking_processor: bool = False
    load_format: str = "auto"  # "dummy": random weights from config.json (GPU checks)
    kv_cache_dtype: str = "auto"  # "fp8": half the KV bytes a token

    def __post_init__(self) -> None:
        if self.quantization not in (None, *QUANTIZATIONS):
            raise UserError(f"--quantization must be fp8 (vLLM's online FP8), not {self.quantization!r}")
        check_kv_cache_dtype(self.kv_cache_dtype)

    @staticmethod
    def split_servers(server: list[str] | None) -> tuple[str, ...]:
        """``--server`` values, each possibly a comma-separated list."""
        return tuple(u.strip() for s in (server or []) for u in s.split(",") if u.strip())

    @property
    def remote(self) -> bool:
        return bool(self.servers)

    def default_concurrency(self) -> int:
        """Requests worth keeping in flight: enough to fill every server's (or the engine's) batch."""
        return SERVER_CONCURRENCY * len(self.servers) if self.servers else 2 * self.max_num_seqs

    def starting_message(self) -> str:
        """What a spinner says while this engine starts."""
        return f"Connecting to {', '.join(self.servers)}" if self.servers else f"Loading {self.model}"
