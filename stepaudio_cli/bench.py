"""`stepaudio bench`: will R1 run on these GPUs, and how fast?

Builds the real architecture from a real-size config with random weights (vLLM's
``load_format="dummy"``: nothing is downloaded, nothing read from disk) or loads a real
checkpoint (``--model``), then measures through the project's own engine path
(:class:`~stepaudio_cli.engines.local.LocalEngine`): engine start, KV-cache capacity, time
to first token for a clip, batch-1 decode speed against the card's weight-bandwidth
floor, and throughput with N requests in flight. ``tiny=True`` runs the same code on the
tiny test checkpoint (how CI exercises it on a CPU).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stepaudio_cli.audio import SAMPLE_RATE, Audio
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS
from stepaudio_cli.checkpoint import R1_TEXT_SIZES, make_config, weight_bytes
from stepaudio_cli.request import Request, Sampling


@dataclass(frozen=True)
class BenchSettings:
    model: str | None = None  # a checkpoint; None: real sizes, random weights
    tiny: bool = False  # the tiny test checkpoint instead of the real sizes
    seconds: float = 10.0  # the clip for time to first token and the throughput requests
    max_model_len: int = 8192
    new_tokens: int = 256  # per request, decode and throughput runs
    concurrency: int = DEFAULT_MAX_NUM_SEQS
    quantizations: tuple[str | None, ...] = (None,)
    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None


@dataclass
class BenchResult:
    quantization: str
    device: str
    engine_start_s: float
    kv_cache_tokens: int | None
    requests_at_max_len: int | None  # full-length requests the KV cache holds at once
    prompt_tokens: int
    ttft_s: float
    decode_ms_per_token: float
    floor_ms_per_token: float | None  # weight bytes per token / measured copy bandwidth
    concurrency: int
    throughput_tok_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def real_size_checkpoint(directory: Path, *, tiny: bool) -> Path:
    """A config + tokenizer directory vLLM can build with dummy weights."""
    from stepaudio_cli.tiny_checkpoint import TinySizes, build_checkpoint, build_tokenizer

    if tiny:
        return build_checkpoint(directory, sizes=TinySizes())
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    (directory / "config.json").write_text(json.dumps(make_config()))
    return directory


def copy_bandwidth() -> tuple[str, float | None]:
    """(device name, bytes/s of an on-device copy), measured before the engine takes the card."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name(0)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    rate = 2 * 10 * src.numel() / (time.perf_counter() - start)  # read + write
    del src, dst
    torch.cuda.empty_cache()
    return name, rate


def clip(seconds: float) -> Audio:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size))
    return Audio(name=f"{seconds:g}s-clip", samples=samples.astype(np.float32))


async def run(settings: BenchSettings, on_status: Callable[[str], None] = lambda s: None) -> list[BenchResult]:
    from stepaudio_cli.engines import EngineSettings, collect, make_engine

    device, bandwidth = copy_bandwidth()
    results = []
    with tempfile.TemporaryDirectory(prefix="stepaudio-bench-") as tmp:
        model = settings.model or str(real_size_checkpoint(Path(tmp) / "model", tiny=settings.tiny))
        text = _text_config(Path(model)) if settings.model else (None if settings.tiny else R1_TEXT_SIZES)
        audio = clip(settings.seconds)
        for quantization in settings.quantizations:
            label = quantization or "bf16"
            engine = make_engine(EngineSettings(
                model=model, max_model_len=settings.max_model_len, max_num_seqs=settings.concurrency,
                tensor_parallel_size=settings.tensor_parallel_size, quantization=quantization,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                load_format="auto" if settings.model else "dummy",
            ))
            on_status(f"{label}: starting the engine")
            start = time.perf_counter()
            try:
                await engine.start()
                started = time.perf_counter() - start
                kv = engine.kv_cache_tokens()
                greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=1)
                on_status(f"{label}: time to first token ({settings.seconds:g} s clip)")
                await collect(engine, Request((audio,), "What is happening?", sampling=greedy, fixed_length=True))  # warm-up
                first = await collect(engine, Request((audio,), "What is happening?", sampling=greedy, fixed_length=True))
                on_status(f"{label}: batch-1 decode ({settings.new_tokens} tokens)")
                long = Sampling(temperature=0.0, top_p=1.0, max_tokens=settings.new_tokens)
                one = await collect(engine, Request((audio,), "What is happening?", sampling=long, fixed_length=True))
                on_status(f"{label}: {settings.concurrency} requests in flight")
                official = Sampling(max_tokens=settings.new_tokens, seed=0)
                many = [Request((audio,), "What is happening?", sampling=official, fixed_length=True, stream=False)
                        for _ in range(settings.concurrency)]
                t0 = time.perf_counter()
                outs = await asyncio.gather(*(collect(engine, r) for r in many))
                wall = time.perf_counter() - t0
            finally:
                await engine.close()
            floor = None
            if bandwidth and text:  # each of the TP ranks reads its shard of the weights at once
                floor = 1000 * weight_bytes(text, quantization, per_token=True) / (bandwidth * engine.tensor_parallel_used)
            results.append(BenchResult(
                quantization=label, device=device, engine_start_s=round(started, 1), kv_cache_tokens=kv,
                requests_at_max_len=kv // settings.max_model_len if kv else None,
                prompt_tokens=first.usage.prompt_tokens,
                ttft_s=round(first.timings.time_to_first_token or first.timings.total, 4),
                decode_ms_per_token=round(1000 / one.timings.tokens_per_s, 2) if one.timings.tokens_per_s else float("nan"),
                floor_ms_per_token=round(floor, 2) if floor else None,
                concurrency=settings.concurrency,
                throughput_tok_s=round(sum(o.usage.completion_tokens for o in outs) / wall, 1),
            ))
    return results


def _text_config(path: Path) -> dict:
    from stepaudio_cli.checkpoint import resolve_model, text_config

    return text_config(json.loads((resolve_model(str(path)) / "config.json").read_text()))
