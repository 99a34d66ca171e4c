"""stepaudio bench"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS, TYPICAL_ANSWER_TOKENS
from stepaudio_cli.errors import UserError

if TYPE_CHECKING:
    from stepaudio_cli.engines.settings import EngineSettings


@options.takes(
    options.ENGINE,
    options.JSON,
    only=("max_model_len", "tensor_parallel_size", "gpu_memory_utilization", "kv_cache_dtype", "json_output"),
)
def bench(
    ctx: typer.Context,
    # Its own --model and --quantization: what it measures (None: R1's real sizes, random weights;
    # forms to compare); the engine it measures them on comes from the shared options.
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            envvar=options.MODEL.envvar,
            help="A downloaded checkpoint. Default: R1's real sizes with random weights (no download).",
        ),
    ] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="The tiny test checkpoint (runs on a CPU).")] = False,
    seconds: Annotated[float, typer.Option(min=1.0, help="Clip length for time to first token and throughput.")] = 10.0,
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens per request in the decode and throughput runs.")] = 256,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Requests in flight for throughput.")
    ] = DEFAULT_MAX_NUM_SEQS,
    forms: Annotated[
        list[str] | None,
        typer.Option(
            "--quantization",
            help="bf16, fp8 (vLLM's online FP8) or a pre-quantized form built with random weights: "
            "w4a16, nvfp4a16, fp8-dynamic (repeat to compare them in one run).",
        ),
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed throughput runs (after a warm-up); the best counts.")] = 3,
    *,
    engine: EngineSettings,
    json_output: bool,
) -> None:
    """Measure R1 on these GPUs: start time, KV-cache room, first token, decode speed, throughput."""
    from stepaudio_cli import bench as core

    term = options.terminal(ctx)
    term.quiet = term.quiet or json_output
    chosen = forms or ["bf16"]
    bad = [q for q in chosen if q not in core.FORMS]
    if bad:
        raise UserError(f"--quantization must be one of {', '.join(core.FORMS)}, not {bad[0]!r}")
    if checkpoint and tiny:
        raise UserError("give --model or --tiny, not both")
    built = [q for q in chosen if q in core.PREQUANTIZED and (checkpoint or (tiny and q != "w4a16"))]
    if built:
        raise UserError(f"--quantization {built[0]} builds R1's real sizes (or --tiny w4a16): leave out --model")
    sizes = {"concurrency": concurrency, "new_tokens": new_tokens, "runs": runs}
    given = {name: value for name, value in sizes.items() if _given(ctx, name)}  # the rest: the device's
    settings = core.BenchSettings(
        engine=engine,  # each form sets its quantization on a copy
        model=checkpoint,
        tiny=tiny,
        seconds=seconds,
        quantizations=tuple(chosen),
        **given,
    )
    planned = core.plan(settings)
    term.info(planned.describe())
    with term.status("Benchmarking") as update:
        results = asyncio.run(core.run(planned.settings, on_status=update))
    if json_output:
        for r in results:
            term.print_json(r.as_dict())
        return
    term.table(
        f"Step-Audio-R1 on {'the CPU' if results[0].device == 'cpu' else results[0].device} "
        f"({'tiny test model' if tiny else checkpoint or 'real sizes, random weights'})",
        [
            ("engine start", [f"{r.engine_start_s:.1f} s" for r in results]),
            ("KV cache", [f"{r.kv_cache_tokens:,} tokens" if r.kv_cache_tokens else "?" for r in results]),
            (
                f"requests of {engine.max_model_len:,} tokens at once",
                [str(r.requests_at_max_len or "?") for r in results],
            ),
            (
                f"first token, {seconds:g} s clip ({results[0].prompt_tokens} prompt tokens)",
                [f"{r.ttft_s * 1000:.0f} ms" for r in results],
            ),
            ("decode, 1 request (official sampling, in-process)", [_decode(r) for r in results]),
            (
                f"throughput, {results[0].concurrency} requests (best of {len(results[0].throughput_runs_tok_s)})",
                [f"{r.throughput_tok_s:,.0f} tok/s" for r in results],
            ),
            (
                f"typical answer ({TYPICAL_ANSWER_TOKENS:,} tokens), 1 request",
                [f"{r.typical_answer_s:.0f} s" for r in results],
            ),
            (
                f"batch at {TYPICAL_ANSWER_TOKENS:,} tokens a clip (est.)",
                [
                    f"{r.clips_per_device_hour:,.0f} clips/{core.device_label(r.device)}-hour, "
                    f"{r.batch_slots} in flight"
                    for r in results
                ],
            ),
            ("engine start phases", [_phases(r.start_phases_s) for r in results]),
        ],
        [r.quantization + ("" if r.kv_cache_dtype == "auto" else f", KV {r.kv_cache_dtype}") for r in results],
    )


def _given(ctx: typer.Context, name: str) -> bool:
    """Set on the command line, by env or in the config file. By name: Typer may carry its own
    copy of click's ParameterSource enum."""
    return getattr(ctx.get_parameter_source(name), "name", "DEFAULT") != "DEFAULT"


def _phases(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {s:.0f} s" for name, s in phases.items()) or "?"


def _decode(r) -> str:
    text = f"{r.decode_ms_per_token:.1f} ms/token"
    if r.floor_ms_per_token:
        text += f" ({r.decode_ms_per_token / r.floor_ms_per_token:.2f}x the {r.floor_ms_per_token:.1f} ms floor)"
    return text
