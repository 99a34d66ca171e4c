"""Throughput of `stepaudio batch` against raw vLLM and against one-request-at-a-time.

All three run in this one process, on the same tiny random Step-Audio checkpoint (CPU by
default), the same files and the same sampling (every request generates exactly
--max-tokens tokens: the random model never picks <|EOT|> in practice; the table shows the
token counts).

Sampling defaults to greedy here: with a 158,720-token vocabulary and a 64-wide model, the
top-p sort over the vocabulary is most of each CPU step and costs the same per sequence
batched or not, which hides what batching buys on a GPU. `--temperature 0.7 --top-p 0.9`
measures the official sampling instead.

  raw vLLM       LLM.generate on all prompts at once, audio decoded beforehand (the ceiling)
  batch          stepaudio's BatchRunner: reads, hashes, decodes, streams, fsyncs a JSONL line
  one-at-a-time  the official example client's pattern: one request, wait, next request
  one request    latency of a single request with 1 new token: raw LLM.generate (audio
                 decoded beforehand) against stepaudio's path from the file (decode included)

    python benchmarks/batch_throughput.py [--files 96] [--seconds 5] [--max-tokens 128]
    python benchmarks/batch_throughput.py --real-sizes --files 32 --seconds 10 --max-tokens 512 \
        --temperature 0.7 --top-p 0.9      # on a GPU: R1's real sizes, random weights
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import soundfile as sf


def make_files(d: Path, n: int, seconds: float) -> list[Path]:
    paths = []
    for i in range(n):
        t = np.arange(int(seconds * 44100)) / 44100
        x = 0.3 * np.sin(2 * np.pi * (200 + 17 * i) * t) + 0.05 * np.random.default_rng(i).normal(size=t.size)
        p = d / f"clip{i:03d}.wav"
        sf.write(p, np.stack([x, x], 1).astype(np.float32), 44100)  # stereo 44.1 kHz: decoding is real work
        paths.append(p)
    return paths


def bench_raw(ckpt: Path, paths: list[Path], args) -> tuple[float, int, float]:
    """(seconds, tokens) of all files at once, and the median latency of one 1-token request."""
    import torch
    from vllm import LLM, SamplingParams

    from stepaudio_cli.audio import load_audio
    from stepaudio_cli.engines.local import import_vllm
    from stepaudio_cli.prompt import build_prompt

    import_vllm()
    audios = [load_audio(str(p)) for p in paths]  # decoded up front: not timed
    prompts = [
        {"prompt": build_prompt(args.prompt, [a]), "multi_modal_data": {"audio": [(c, 16000) for c in a.chunks()]}}
        for a in audios
    ]
    llm = LLM(
        model=str(ckpt),
        max_model_len=args.max_model_len,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=not torch.cuda.is_available(),
        limit_mm_per_prompt={"audio": 64},
        disable_log_stats=True,
        seed=0,
        load_format=args.load_format,
    )
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        ignore_eos=True,
        skip_special_tokens=False,
    )
    llm.generate(prompts[: args.warmup], params, use_tqdm=False)
    best = float("inf")
    for _ in range(args.repeat):
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        best = min(best, time.perf_counter() - start)
    elapsed = best
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    one = SamplingParams(temperature=0.0, max_tokens=1, skip_special_tokens=False)
    latencies = []
    for i in range(args.single + 1):
        start = time.perf_counter()
        llm.generate([prompts[i % len(prompts)]], one, use_tqdm=False)
        latencies.append(time.perf_counter() - start)
    del llm
    gc.collect()
    return elapsed, tokens, statistics.median(latencies[1:])


class SendTimes:
    """The engine, noting when each request is sent to it."""

    def __init__(self, engine) -> None:
        self.engine, self.sent = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def stream(self, request):
        self.sent.append(time.perf_counter())
        return self.engine.stream(request)


async def bench_stepaudio(ckpt: Path, paths: list[Path], args, out_dir: Path) -> dict[str, tuple[float, int]]:
    from stepaudio_cli.audio import load_audio
    from stepaudio_cli.batch import BatchRunner
    from stepaudio_cli.batch_job import BatchJob
    from stepaudio_cli.engines import EngineSettings, collect, open_engine
    from stepaudio_cli.request import Request, Sampling
    from stepaudio_cli.store import Store

    sampling = Sampling(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens)
    settings = EngineSettings(
        model=str(ckpt), max_model_len=args.max_model_len, max_num_seqs=args.max_num_seqs, load_format=args.load_format
    )
    results = {}
    async with open_engine(settings) as engine:
        job = BatchJob(prompt=args.prompt, sampling=sampling, concurrency=2 * args.max_num_seqs)
        store = Store(out_dir / "warmup.jsonl")
        await BatchRunner(job, engine, store, paths[: args.warmup]).run()
        store.close()
        best, filled = float("inf"), 0.0
        timed = SendTimes(engine)
        for i in range(args.repeat):
            store = Store(out_dir / f"results{i}.jsonl")
            runner = BatchRunner(job, timed, store, paths)
            timed.sent.clear()
            start = time.perf_counter()
            summary = await runner.run()
            elapsed = time.perf_counter() - start
            store.close()
            if elapsed < best:  # when the engine had every request of the best run (files read, decoded)
                best, filled = elapsed, sorted(timed.sent)[min(len(paths), job.concurrency) - 1] - start
            assert summary.answered == len(paths) and not summary.failed, summary
        tokens = sum(r["usage"]["completion_tokens"] for r in Store(out_dir / f"results{args.repeat - 1}.jsonl").load())
        results["batch"] = (best, tokens)
        results["filled"] = (filled, 0)

        start = time.perf_counter()
        tokens = 0
        for p in paths[: args.sequential_files]:
            request = Request(audios=(load_audio(str(p)),), question=args.prompt, sampling=sampling)
            tokens += (await collect(engine, request)).usage.completion_tokens
        results["one-at-a-time"] = (time.perf_counter() - start, tokens)

        one, decode = [], []
        for i in range(args.single + 1):
            start = time.perf_counter()
            audio = load_audio(str(paths[i % len(paths)]))
            decoded = time.perf_counter()
            greedy = Sampling(temperature=0.0, top_p=1.0, max_tokens=1)
            await collect(engine, Request(audios=(audio,), question=args.prompt, sampling=greedy))
            one.append(time.perf_counter() - start)
            decode.append(decoded - start)
        results["one request"] = (statistics.median(one[1:]), statistics.median(decode[1:]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=96)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--sequential-files", type=int, default=16, help="files timed one at a time (rate is per file)")
    parser.add_argument("--prompt", default="What is happening in this audio?")
    parser.add_argument("--warmup", type=int, default=8, help="files run before timing, per method")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs of raw and batch; the best counts")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--single", type=int, default=5, help="1-token requests timed (median)")
    parser.add_argument("--model", help="checkpoint directory (default: build a tiny random one)")
    parser.add_argument("--real-sizes", action="store_true", help="R1's real sizes, random weights (a GPU)")
    parser.add_argument("--max-model-len", type=int, default=4096)
    args = parser.parse_args()
    args.load_format = "dummy" if args.real_sizes else "auto"

    from stepaudio_cli.tiny_checkpoint import build_checkpoint
    from stepaudio_cli.vllm_log import engine_output_to_log, quiet_vllm_logs

    quiet_vllm_logs()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.real_sizes:
            from stepaudio_cli.bench import real_size_checkpoint

            ckpt = real_size_checkpoint(tmp / "ckpt", tiny=False)
        else:
            ckpt = Path(args.model) if args.model else build_checkpoint(tmp / "ckpt", seed=0)
        (tmp / "audio").mkdir()
        paths = make_files(tmp / "audio", args.files, args.seconds)
        with engine_output_to_log():
            raw = bench_raw(ckpt, paths, args)
            ours = asyncio.run(bench_stepaudio(ckpt, paths, args, tmp))

    rows = {"raw vLLM LLM.generate": (raw[0], raw[1], args.files), "stepaudio batch": (*ours["batch"], args.files)}
    tok_rate = {k: t / s for k, (s, t, _) in rows.items()}
    rows["one at a time"] = (*ours["one-at-a-time"], args.sequential_files)
    rate = {k: n / s for k, (s, _, n) in rows.items()}
    print(
        f"\n{args.files} files x {args.seconds:.0f} s audio, {args.max_tokens} new tokens each, "
        f"max_num_seqs {args.max_num_seqs}, temperature {args.temperature}, top_p {args.top_p}\n"
    )
    print(f"{'method':<24}{'files':>6}{'seconds':>10}{'files/s':>10}{'tokens':>9}")
    for name, (secs, tokens, n) in rows.items():
        print(f"{name:<24}{n:>6}{secs:>10.2f}{rate[name]:>10.2f}{tokens:>9}")
    print()
    ratio = tok_rate["stepaudio batch"] / tok_rate["raw vLLM LLM.generate"]
    print(f"batch / raw vLLM        {ratio:.3f}x tokens/s   (target >= 0.99 on a GPU)")
    filled = ours["filled"][0]
    print(
        f"batch's requests all in the engine after {filled:.2f} s of its {rows['stepaudio batch'][0]:.2f} s "
        "(files read and decoded; raw vLLM's audio is decoded before its clock starts)"
    )
    print(f"batch / one at a time   {rate['stepaudio batch'] / rate['one at a time']:.2f}x   (target >= 8)")
    single, decode = ours["one request"]
    print(
        f"one request, 1 token    raw {raw[2] * 1000:.1f} ms, stepaudio {single * 1000:.1f} ms "
        f"(+{(single - raw[2]) * 1000:.1f} ms, of which file decode {decode * 1000:.1f} ms; target: decode + 10 ms)"
    )


if __name__ == "__main__":
    main()
