"""A recording longer than the context, answered in windows (stepaudio_cli/windows.py), on
R1's real sizes with random weights; against one request of the same audio where it fits.

One in-process engine (the project's LocalEngine, ``load_format="dummy"``), then:

  windows       the whole synthetic recording (speech-like noise with pauses) planned as `ask`
                plans it (the default reasoning reserve for the context), every window sent
                at once (the engine batches --max-num-seqs of them, 4 as `ask` starts it),
                then the text-only combining request
  one request   the longest piece of the same recording that one request holds (one window's
                worth), asked alone: what a single request of that audio costs, and the
                2-hour total at that rate (one request cannot hold 2 hours: ~12.7 tokens/s of
                audio against 16,384 positions, and at most 64 audio chunks per request)

Random weights never stop on their own, so every request generates exactly --new-tokens
(``fixed_length``): bounded work, and the same token count in both rows.

    # on a lent H200 after the ../shared/gpu kit (see scripts/gpu-check.sh), about 4-5 minutes:
    python3 benchmarks/long_recording.py --minutes 120 --new-tokens 256
    # on a CPU, the tiny checkpoint (what CI could run; seconds):
    python3 benchmarks/long_recording.py --tiny --minutes 3 --max-model-len 4096 --new-tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from stepaudio_cli.audio import Audio
from stepaudio_cli.audio_tokens import SAMPLE_RATE
from stepaudio_cli.defaults import ASK_MAX_NUM_SEQS
from stepaudio_cli.durations import format_duration
from stepaudio_cli.request import Request, Sampling


def synthetic(minutes: float, seed: int = 0) -> Audio:
    """Noise bursts (2-9 s 'phrases') separated by 0.3-1.5 s pauses, at 16 kHz."""
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * SAMPLE_RATE)
    x = np.empty(total, dtype=np.float32)
    i = 0
    while i < total:
        talk = int(rng.uniform(2, 9) * SAMPLE_RATE)
        pause = int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
        x[i : i + talk] = rng.normal(0, 0.15, min(talk, total - i))
        x[i + talk : i + talk + pause] = rng.normal(0, 0.002, max(0, min(pause, total - i - talk)))
        i += talk + pause
    return Audio(name=f"synthetic-{minutes:g}min.wav", samples=x)


async def run(args) -> dict:
    from stepaudio_cli.bench import real_size_checkpoint
    from stepaudio_cli.engines import EngineSettings, collect, open_engine
    from stepaudio_cli.windows import Windowing, answer_in_windows, plan, span

    audio = synthetic(args.minutes)
    question = "Summarise what is said in this recording."
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = real_size_checkpoint(Path(tmp) / "r1", tiny=args.tiny)
        settings = EngineSettings(
            model=str(ckpt),
            max_model_len=args.max_model_len,
            max_num_seqs=args.max_num_seqs,
            load_format="auto" if args.tiny else "dummy",
            quantization=args.quantization,
        )
        t0 = time.perf_counter()
        async with open_engine(settings) as engine:
            start_s = time.perf_counter() - t0
            # Windows as `ask` plans them (the default reserve), then exactly --new-tokens each.
            windows = plan(Request((audio,), question, sampling=Sampling()), engine.max_model_len, Windowing())
            assert windows, "the recording fits one request: use more --minutes"
            sampling = Sampling(temperature=0.7, top_p=0.9, max_tokens=args.new_tokens)
            request = Request((audio,), question, sampling=sampling, fixed_length=True)
            done_at: list[float] = []
            t1 = time.perf_counter()
            result = await answer_in_windows(
                request,
                windows,
                lambda r, d: collect(engine, r, d),
                max_model_len=engine.max_model_len,
                on_progress=lambda p: done_at.append(time.perf_counter() - t1) if p.answered else None,
            )
            windowed_s = time.perf_counter() - t1
            map_s = done_at[-1]
            # One request of the longest piece one request holds (the first window's length).
            piece = Audio("piece", audio.samples[: windows[0].end - windows[0].start])
            t2 = time.perf_counter()
            single = await collect(engine, replace(request, audios=(piece,)))
            single_s = time.perf_counter() - t2
    return {
        "device": _device(),
        "recording": format_duration(audio.duration),
        "max_model_len": args.max_model_len,
        "max_num_seqs": args.max_num_seqs,
        "new_tokens_per_request": args.new_tokens,
        "engine_start_s": round(start_s, 1),
        "windows": [
            {"span": span(w, audio.duration), **{k: v for k, v in rec.items() if k in ("usage", "finish_reason")}}
            for w, rec in zip(windows, result.windows)
        ],
        "windowed": {
            "requests": len(windows) + 1,
            "wall_s": round(windowed_s, 1),
            "map_s": round(map_s, 1),
            "reduce_s": round(windowed_s - map_s, 1),
            "usage": result.usage.as_dict(),
        },
        "one_request": {
            "audio": format_duration(piece.duration),
            "wall_s": round(single_s, 1),
            "usage": single.usage.as_dict(),
            "whole_recording_at_this_rate_s": round(single_s * audio.duration / piece.duration, 1),
        },
    }


def _device() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=120.0, help="length of the synthetic recording")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens every request generates (bounds the run)")
    p.add_argument("--max-model-len", type=int, default=16384)
    p.add_argument(
        "--max-num-seqs",
        type=int,
        default=ASK_MAX_NUM_SEQS,
        help=f"sequences batched at once (default {ASK_MAX_NUM_SEQS}, as `ask` starts its engine)",
    )
    p.add_argument("--quantization", default=None, help="fp8, or none for bf16")
    p.add_argument("--tiny", action="store_true", help="the tiny test checkpoint (CPU)")
    args = p.parse_args()
    report = asyncio.run(run(args))
    w, one = report["windowed"], report["one_request"]
    print(
        f"{report['device']}: a {report['recording']} recording, max model length {report['max_model_len']}, "
        f"{report['max_num_seqs']} sequences at once, {report['new_tokens_per_request']} new tokens per request, "
        f"engine start {report['engine_start_s']} s"
    )
    for i, win in enumerate(report["windows"], 1):
        u = win["usage"]
        print(f"  window {i:2d} {win['span']:>17}  prompt {u['prompt_tokens']:6d}  new {u['completion_tokens']:5d}")
    print(
        f"windows: {w['requests']} requests in {w['wall_s']} s (map {w['map_s']} s, combine {w['reduce_s']} s), "
        f"prompt {w['usage']['prompt_tokens']:,} + new {w['usage']['completion_tokens']:,} tokens"
    )
    print(
        f"one request of {one['audio']} (the most one request holds): {one['wall_s']} s, "
        f"prompt {one['usage']['prompt_tokens']:,} + new {one['usage']['completion_tokens']:,} tokens; "
        f"the whole recording at that rate, one request after another: {one['whole_recording_at_this_rate_s']} s"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
