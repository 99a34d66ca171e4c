"""Engines: one small interface, two implementations (in-process vLLM, remote server)."""

from stepaudio_cli.engines.base import Done, Engine, Result, Timings, Usage, collect

__all__ = ["Done", "Engine", "Result", "Timings", "Usage", "collect", "open_engine", "starting_message"]


def starting_message(settings) -> str:
    """What the spinner says while the engine ``settings`` asks for starts."""
    if settings.servers:
        return f"Connecting to {', '.join(settings.servers)}"
    return f"Loading {settings.model}"


def open_engine(settings) -> Engine:
    """The engine ``settings`` asks for: remote when a server URL is given, else local."""
    if settings.servers:
        from stepaudio_cli.engines.remote import RemoteEngine, RemotePool

        if len(settings.servers) == 1:
            return RemoteEngine(settings.servers[0], api_key=settings.api_key, model=settings.model_override)
        return RemotePool(
            [RemoteEngine(url, api_key=settings.api_key, model=settings.model_override) for url in settings.servers]
        )
    from stepaudio_cli.engines.local import LocalEngine

    return LocalEngine(
        settings.model,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        dtype=settings.dtype,
        max_num_seqs=settings.max_num_seqs,
        quantization=settings.quantization,
        thinking_processor=settings.thinking_processor,
        load_format=settings.load_format,
    )
