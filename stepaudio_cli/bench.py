"""`stepaudio bench`: will R1 run on these GPUs, and how fast?

Builds the real architecture from a real-size config with random weights (vLLM's
``load_format="dummy"``: nothing is downloaded, nothing read from disk) or loads a real
checkpoint (``--model``), then measures through the project's own engine path
(:class:`~stepaudio_cli.engines.local.LocalEngine`): engine start, KV-cache capacity, time
to first token for a clip, batch-1 decode speed against the card's weight-bandwidth
floor, and throughput with N requests in flight. ``tiny=True`` runs the same code on the
tiny test checkpoint (how CI exercises it on a CPU).

Decode is measured with the official sampling, as ``ask`` and ``batch`` send it: on a CPU,
top-p over the 158k-token vocabulary is most of a token's time. The tiny model on a 2-core box,
256 tokens: greedy 3.5 ms/token, temperature alone 4.3, temperature and top-p 13.5 in-process;
through ``serve`` 16.2 ms (``ask --server`` said 61 tok/s): the rest is the server's HTTP
streaming and detokenizing, on the same cores. Sizes left unset (None) follow the device: on a CPU, a
lighter load (:data:`CPU_LOAD`) than a GPU's; :func:`plan` says up front what will run and
roughly how long.

Throughput is measured the way ``batch`` runs: the official sampling with no per-request
seed (a seeded request makes vLLM sample it on its own), after a warm-up of the same batch
shape, best of ``runs``. From it and the decode speed come the numbers users plan with:
seconds for a typical answer (first token + TYPICAL_ANSWER_TOKENS x decode) and clips an
hour per GPU for ``batch`` at that length, with as many requests in flight as the KV cache
holds at ~TYPICAL_REQUEST_TOKENS each (an estimate from the measured throughput: decode
bound, with the longer contexts' extra attention work not counted).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from stepaudio_cli.audio import Audio
from stepaudio_cli.audio_tokens import SAMPLE_RATE
from stepaudio_cli.checkpoint import checkpoint_quantization, make_config, resolve_model, text_config, weight_bytes
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS, TYPICAL_ANSWER_TOKENS, TYPICAL_REQUEST_TOKENS
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.request import Request, Sampling
from stepaudio_cli.vllm_log import engine_log_path, log_size, read_since, stamped_lines, start_timeline, vllm_info_logs


@dataclass(frozen=True)
class BenchSettings:
    #: The engine every form is measured on (context, GPUs, memory, KV dtype); each form sets
    #: its model, quantization and load format on a copy, and ``concurrency`` its batch size.
    engine: EngineSettings = EngineSettings()
    model: str | None = None  # a checkpoint; None: real sizes, random weights
    tiny: bool = False  # the tiny test checkpoint instead of the real sizes
    seconds: float = 10.0  # the clip for time to first token and the throughput requests
    new_tokens: int | None = None  # per request, decode and throughput runs (None: the device's)
    concurrency: int | None = None  # requests in flight for throughput (None: the device's)
    quantizations: tuple[str | None, ...] = (None,)
    runs: int | None = None  # timed throughput runs; the best counts (None: the device's)


#: The load a GPU is measured under, and the lighter one on a CPU (a CPU samples each request's
#: tokens one after the other: 32 requests x 256 tokens x 4 runs took 6 minutes on 2 cores).
GPU_LOAD = {"concurrency": DEFAULT_MAX_NUM_SEQS, "new_tokens": 256, "runs": 3}
CPU_LOAD = {"concurrency": 4, "new_tokens": 128, "runs": 1}
#: Rough costs for the up-front estimate: engine start (a GPU's first start compiles), seconds
#: a token of one request's decode, seconds a token of the batch (CPU: this 2-core box).
COST = {"cpu": (35.0, 0.014, 0.012), "gpu": (120.0, 0.025, 0.001)}
WARM_UP_TOKENS = 32  # per request, the untimed batch before the throughput runs


@dataclass(frozen=True)
class Plan:
    device: str  # "CPU", or the GPU's short name ("H100")
    settings: BenchSettings  # every size set
    estimate_s: float
    lighter: bool  # the CPU's lighter load was chosen for sizes left unset

    def describe(self) -> str:
        """One line: what will run, where, and roughly how long."""
        s = self.settings
        what = (
            "the tiny test model" if s.tiny else s.model or "R1's real sizes with random weights (nothing downloaded)"
        )
        forms = ", ".join(q or "bf16" for q in s.quantizations)
        load = (
            f"engine start, first token for a {s.seconds:g} s clip, a {s.new_tokens}-token decode, "
            f"{s.concurrency} requests of {s.new_tokens} tokens in flight (a warm-up, then "
            f"{s.runs} timed run{'s' if s.runs != 1 else ''})"
        )
        lighter = (
            f"; lighter than a GPU's {GPU_LOAD['concurrency']} x {GPU_LOAD['new_tokens']} tokens, best of "
            f"{GPU_LOAD['runs']} (--concurrency, --new-tokens, --runs)"
            if self.lighter
            else ""
        )
        minutes = self.estimate_s / 60
        rough = f"about {self.estimate_s:.0f} s" if minutes < 1.5 else f"about {minutes:.0f} min"
        return f"Benchmarking {what}, {forms}, on the {self.device}: {load}{lighter}. This takes {rough}."


def device_label(name: str) -> str:
    """A device as per-hour figures name it: "CPU", or the GPU's model ("NVIDIA H100 80GB HBM3"
    -> "H100", "NVIDIA GeForce RTX 4090" -> "RTX 4090", "NVIDIA A100-SXM4-80GB" -> "A100")."""
    if name.lower() == "cpu":
        return "CPU"
    words = [w for w in name.replace("-", " ").split() if w not in ("NVIDIA", "GeForce", "Tesla")]
    kept = []
    for word in words:
        kept.append(word)
        if any(c.isdigit() for c in word):
            break
    return " ".join(kept) or "GPU"


def plan(settings: BenchSettings) -> Plan:
    """``settings`` with the device's load for sizes left unset, and what that will take."""
    from stepaudio_cli import gpus

    visible = gpus.visible()
    kind = "gpu" if visible else "cpu"
    load = GPU_LOAD if visible else CPU_LOAD
    unset = {k: v for k, v in load.items() if getattr(settings, k) is None}
    settings = dataclasses.replace(settings, **unset)
    start, decode, batch = COST[kind]
    batch_tokens = settings.concurrency * (
        min(settings.new_tokens, WARM_UP_TOKENS) + settings.runs * settings.new_tokens
    )
    per_form = start + settings.new_tokens * decode + batch_tokens * batch
    return Plan(
        device_label(visible[0].name) if visible else "CPU",
        settings,
        per_form * len(settings.quantizations),
        lighter=not visible and bool(unset),
    )


@dataclass
class BenchResult:
    quantization: str
    kv_cache_dtype: str
    device: str
    engine_start_s: float
    kv_cache_tokens: int | None
    requests_at_max_len: int | None  # full-length requests the KV cache holds at once
    prompt_tokens: int
    ttft_s: float
    decode_ms_per_token: float
    floor_ms_per_token: float | None  # weight bytes per token / measured copy bandwidth
    concurrency: int
    throughput_tok_s: float  # best of the timed runs
    throughput_runs_tok_s: list[float]
    typical_answer_s: float  # first token + TYPICAL_ANSWER_TOKENS x decode, one request
    batch_slots: int  # requests in flight for batch at typical length: max_num_seqs, or what the KV cache holds
    clips_per_device_hour: float  # batch at typical length, per GPU (on a machine without one: the CPU)
    start_phases_s: dict[str, float]  # the start's seconds by phase (vllm_log.START_PHASES), all of them

    def as_dict(self) -> dict:
        return asdict(self)


def _compressed(weights: dict, acts: dict | None, fmt: str) -> dict:
    """A compressed-tensors quantization_config as llm-compressor writes it, with the community
    builds' ignore list (audio encoder, adapter and head stay bf16)."""
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "quantization_status": "compressed",
        "ignore": ["lm_head", "re:encoder.*", "re:adapter.*"],
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"symmetric": True, "dynamic": False, **weights},
                "input_activations": acts,
                "output_activations": None,
                "format": fmt,
            }
        },
    }


#: Pre-quantized forms ``bench`` builds with R1's real sizes and random weights, one per
#: family the community publishes (``--quantization``): the weights are vLLM's dummy ones,
#: so they measure memory and speed, never accuracy.
PREQUANTIZED = {
    "w4a16": _compressed(
        {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}, None, "pack-quantized"
    ),
    "nvfp4a16": _compressed(
        {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16}, None, "nvfp4-pack-quantized"
    ),
    "fp8-dynamic": _compressed(
        {"num_bits": 8, "type": "float", "strategy": "channel"},
        {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True, "symmetric": True},
        "float-quantized",
    ),
}
FORMS = ("bf16", "fp8", *PREQUANTIZED)  # fp8: vLLM's online FP8 of the bf16 weights


def real_size_checkpoint(directory: Path, *, tiny: bool, prequantized: str | None = None) -> Path:
    """A config + tokenizer directory vLLM can build with dummy weights (``prequantized``: a
    quantization_config of that :data:`PREQUANTIZED` family in it; with ``tiny``, only w4a16,
    as real tiny weights)."""
    from stepaudio_cli.tiny_checkpoint import TinySizes, build_checkpoint, build_tokenizer

    if tiny:
        return build_checkpoint(directory, sizes=TinySizes(), quantize=prequantized)
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    config = make_config()
    if prequantized:
        config["quantization_config"] = PREQUANTIZED[prequantized]
    (directory / "config.json").write_text(json.dumps(config))
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
    samples = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)
    return Audio(name=f"{seconds:g}s-clip", samples=samples.astype(np.float32))


async def run(settings: BenchSettings, on_status: Callable[[str], None] = lambda s: None) -> list[BenchResult]:
    from stepaudio_cli.engines import collect, make_engine

    settings = plan(settings).settings
    device, bandwidth = copy_bandwidth()
    results = []
    with tempfile.TemporaryDirectory(prefix="stepaudio-bench-") as tmp:
        audio = clip(settings.seconds)
        for form in settings.quantizations:
            form = form or "bf16"
            prequantized = form if form in PREQUANTIZED else None
            quantization = "fp8" if form == "fp8" else None
            if settings.model:
                model = settings.model
                config = json.loads((resolve_model(model) / "config.json").read_text())
            else:
                model = str(real_size_checkpoint(Path(tmp) / form, tiny=settings.tiny, prequantized=prequantized))
                config = json.loads((Path(model) / "config.json").read_text())
            own = checkpoint_quantization(config)
            label = own.label if own else form
            text = None if settings.tiny else text_config(config)
            engine = make_engine(
                dataclasses.replace(
                    settings.engine,
                    model=model,
                    quantization=quantization,
                    max_num_seqs=settings.concurrency,
                    load_format="auto" if settings.model else "dummy",
                )
            )
            on_status(f"{label}: starting the engine")
            log = None if os.environ.get("STEPAUDIO_DEBUG") else engine_log_path()  # as the engine writes it
            offset = log_size(log)
            launched, start = time.time(), time.perf_counter()
            try:
                with vllm_info_logs(log):
                    await engine.start()
                started = time.perf_counter() - start
                imported = getattr(engine, "imported_at", None)  # in-process: the config phase's start
                begun = {"config and tokenizer": imported - launched} if imported else None
                phases = start_timeline(stamped_lines(read_since(log, offset), launched), started, begun)
                kv = engine.kv_cache_tokens()
                greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=1)
                on_status(f"{label}: time to first token ({settings.seconds:g} s clip)")
                await collect(
                    engine, Request((audio,), "What is happening?", sampling=greedy, fixed_length=True)
                )  # warm-up
                first = await collect(
                    engine, Request((audio,), "What is happening?", sampling=greedy, fixed_length=True)
                )
                on_status(f"{label}: batch-1 decode ({settings.new_tokens} tokens, official sampling)")
                long = Sampling(max_tokens=settings.new_tokens)  # as ask sends it
                one = await collect(engine, Request((audio,), "What is happening?", sampling=long, fixed_length=True))
                runs = await _throughput(
                    engine,
                    audio,
                    settings,
                    lambda i, label=label: on_status(f"{label}: {settings.concurrency} requests in flight ({i})"),
                )
            finally:
                await engine.close()
            floor = None
            if bandwidth and text:  # each of the TP ranks reads its shard of the weights at once
                floor = (
                    1000
                    * weight_bytes(text, own or quantization, per_token=True)
                    / (bandwidth * engine.tensor_parallel_used)
                )
            ttft = first.timings.time_to_first_token or first.timings.total
            decode_ms = 1000 / one.timings.tokens_per_s if one.timings.tokens_per_s else float("nan")
            best = max(runs)
            slots = min(settings.concurrency, kv // TYPICAL_REQUEST_TOKENS) if kv else settings.concurrency
            per_gpu = best * min(1.0, slots / settings.concurrency) / engine.tensor_parallel_used
            results.append(
                BenchResult(
                    quantization=label,
                    kv_cache_dtype=settings.engine.kv_cache_dtype,
                    device=device,
                    engine_start_s=round(started, 1),
                    kv_cache_tokens=kv,
                    requests_at_max_len=kv // settings.engine.max_model_len if kv else None,
                    prompt_tokens=first.usage.prompt_tokens,
                    ttft_s=round(ttft, 4),
                    decode_ms_per_token=round(decode_ms, 2),
                    floor_ms_per_token=round(floor, 2) if floor else None,
                    concurrency=settings.concurrency,
                    throughput_tok_s=round(best, 1),
                    throughput_runs_tok_s=[round(r, 1) for r in runs],
                    typical_answer_s=round(ttft + TYPICAL_ANSWER_TOKENS * decode_ms / 1000, 1),
                    batch_slots=slots,
                    clips_per_device_hour=round(3600 * per_gpu / TYPICAL_ANSWER_TOKENS, 1),
                    start_phases_s=phases,
                )
            )
    return results


async def _throughput(engine, audio: Audio, settings: BenchSettings, on_run: Callable[[str], None]) -> list[float]:
    """Tokens/s of ``concurrency`` requests at once, as ``batch`` sends them (official
    sampling, no seed), after one untimed run of the same shape; one figure per timed run."""
    from stepaudio_cli.engines import collect

    def requests(max_tokens: int) -> list[Request]:
        sampling = Sampling(max_tokens=max_tokens)
        return [
            Request((audio,), "What is happening?", sampling=sampling, fixed_length=True, stream=False)
            for _ in range(settings.concurrency)
        ]

    on_run("warm-up")
    await asyncio.gather(*(collect(engine, r) for r in requests(min(settings.new_tokens, WARM_UP_TOKENS))))
    rates = []
    for i in range(settings.runs):
        on_run(f"run {i + 1} of {settings.runs}")
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(collect(engine, r) for r in requests(settings.new_tokens)))
        rates.append(sum(o.usage.completion_tokens for o in outs) / (time.perf_counter() - t0))
    return rates
