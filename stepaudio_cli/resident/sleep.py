"""vLLM's sleep mode for resident engines: when sleep is possible, and the three calls (sleep, wake
up, is it asleep) on a server's private address.

Level 1 sleep moves the weights to host memory and drops the KV cache, giving the GPU's memory
back; waking copies the weights back (seconds) instead of a whole start (minutes). vLLM serves
these routes with ``VLLM_SERVER_DEV_MODE=1`` on a server started with ``--enable-sleep-mode``
(CUDA only); our route guard keeps them behind the engine's key or private socket.
"""

from __future__ import annotations

from pathlib import Path

from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import EngineError

HOST_MEMORY_MARGIN = 1.25  # host memory wanted per byte of weights moved there
SLEEP_TIMEOUT_S = 300.0


def can_sleep(engine: EngineSettings, model_path: Path) -> str | None:
    """None when the engine can sleep here; else why not (no GPU, too little host memory)."""
    from stepaudio_cli import gpus

    if not gpus.count_cheap():
        return "no GPU (vLLM's sleep mode needs CUDA)"
    needed = weights_bytes(engine, model_path) * HOST_MEMORY_MARGIN
    available = host_memory_available()
    if available is not None and available < needed:
        return f"host memory {available / 2**30:.0f} GiB free, the weights need {needed / 2**30:.0f} GiB"
    return None


def weights_bytes(engine: EngineSettings, model_path: Path) -> int:
    """The bytes of weights the engine holds: its safetensors files, else (random weights) the
    arithmetic of its config."""
    files = sum(f.stat().st_size for f in model_path.glob("*.safetensors"))
    if files:
        return files
    import json

    from stepaudio_cli.checkpoint import checkpoint_quantization, text_config, weight_bytes

    config = json.loads((model_path / "config.json").read_bytes())
    return weight_bytes(text_config(config), checkpoint_quantization(config) or engine.quantization)


def host_memory_available() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available


class EngineControl:
    """Sleep, wake and ask a server of ours (its socket or loopback port, with its key)."""

    def __init__(self, url: str, uds: str | None = None, api_key: str | None = None) -> None:
        from stepaudio_cli.server_activity import server_client

        self.url = url
        self._client = server_client(url, uds, api_key, timeout=SLEEP_TIMEOUT_S)

    def sleep(self) -> None:
        self._post("/sleep", params={"level": 1})

    def wake(self) -> None:
        self._post("/wake_up")

    def is_sleeping(self) -> bool:
        body = self._call("GET", "/is_sleeping")
        return bool(isinstance(body, dict) and body.get("is_sleeping"))

    def _post(self, path: str, params: dict | None = None) -> None:
        self._call("POST", path, params)

    def _call(self, method: str, path: str, params: dict | None = None):
        import httpx

        try:
            response = self._client.request(method, path, params=params)
        except httpx.HTTPError as e:
            raise EngineError(f"{self.url}{path}: {type(e).__name__}: {e}") from None
        if response.status_code != 200:
            raise EngineError(f"{self.url}{path}: HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            return None

    def close(self) -> None:
        self._client.close()
