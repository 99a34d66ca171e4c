"""`stepaudio bench` on the tiny checkpoint: the same code that measures R1 on a GPU."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stepaudio_cli.checkpoint import R1_TEXT_SIZES, weight_bytes
from stepaudio_cli.cli import app

pytestmark = pytest.mark.engine


def test_bench_tiny_reports_every_measure_as_json():
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--tiny",
            "--json",
            "--seconds",
            "2",
            "--new-tokens",
            "8",
            "--concurrency",
            "3",
            "--max-model-len",
            "2048",
            "--runs",
            "2",
        ],
    )
    assert result.exit_code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["quantization"] == "bf16" and record["device"] == "cpu"
    assert record["engine_start_s"] > 0 and record["ttft_s"] > 0 and record["decode_ms_per_token"] > 0
    assert record["kv_cache_tokens"] >= 2048 and record["requests_at_max_len"] == record["kv_cache_tokens"] // 2048
    assert record["prompt_tokens"] > 2 * 12  # a 2 s clip is 26 audio tokens, with the text around it
    assert record["concurrency"] == 3 and record["throughput_tok_s"] > 0
    assert record["floor_ms_per_token"] is None  # no GPU, no bandwidth to compare against
    # Throughput as batch runs it: best of the timed runs (after an untimed warm-up).
    runs = record["throughput_runs_tok_s"]
    assert len(runs) == 2 and record["throughput_tok_s"] == max(runs)
    # A typical answer is the first token plus 2,650 decode steps.
    expect = record["ttft_s"] + 2650 * record["decode_ms_per_token"] / 1000
    assert abs(record["typical_answer_s"] - expect) <= 0.1 and record["typical_answer_s"] > record["ttft_s"]
    # batch at that length: as many in flight as the KV cache holds at ~2,800 tokens, at most the concurrency.
    assert record["batch_slots"] == min(3, record["kv_cache_tokens"] // 2800) >= 1
    share = record["batch_slots"] / 3
    assert record["clips_per_device_hour"] == pytest.approx(3600 * record["throughput_tok_s"] * share / 2650, rel=0.01)
    # Every second of the engine start is in a phase named after what vLLM did then.
    phases = record["start_phases_s"]
    assert {"engine process start", "weight loading", "server start"} <= set(phases)
    assert sum(phases.values()) == pytest.approx(record["engine_start_s"], abs=0.5)


def test_bench_refuses_bad_options_in_one_line():
    result = CliRunner().invoke(app, ["bench", "--quantization", "int3"])
    assert result.exit_code == 2 and result.stderr.strip() == (
        "error: --quantization must be one of bf16, fp8, w4a16, nvfp4a16, fp8-dynamic, not 'int3'"
    )
    built = CliRunner().invoke(app, ["bench", "--model", "x", "--quantization", "nvfp4a16"])
    assert built.exit_code == 2 and "leave out --model" in built.stderr


def test_prequantized_forms_are_the_families_published():
    from stepaudio_cli.bench import PREQUANTIZED
    from stepaudio_cli.checkpoint import checkpoint_quantization, make_config

    labels = {
        name: checkpoint_quantization({**make_config(), "quantization_config": q}).label
        for name, q in PREQUANTIZED.items()
    }
    assert labels == {"w4a16": "W4A16", "nvfp4a16": "NVFP4A16", "fp8-dynamic": "FP8"}


def test_decode_floor_arithmetic():
    # bf16 reads every linear layer and the head once per token; FP8 halves the linear layers.
    bf16, fp8 = weight_bytes(R1_TEXT_SIZES, per_token=True), weight_bytes(R1_TEXT_SIZES, "fp8", per_token=True)
    assert 63e9 < bf16 < 65e9 and 32e9 < fp8 < 34e9
    assert round(1000 * bf16 / 2.95e12, 1) == 21.7  # ms/token at an H100's measured copy bandwidth


def test_start_timeline_names_every_second_of_a_start():
    from stepaudio_cli.vllm_log import START_PHASES, compile_cache, loading_step, start_timeline

    # vLLM 0.26's lines on an H100, stamped with the second (since launch) each came; ready at 60 s.
    lines = [
        (6.0, "(APIServer pid=1) INFO [api_utils.py:286] non-default args: {'model': '/tmp/r1'}"),
        (7.0, "(APIServer pid=1) INFO [model.py:1788] Using max model len 8192"),
        # The engine process (spawned: it imports vLLM again) says nothing until it is up.
        (14.0, "(EngineCore pid=2) INFO [core.py:133] Initializing a V1 LLM engine (v0.26.0) with config: ..."),
        (18.0, "(EngineCore pid=2) INFO [parallel_state.py:1] world_size=1 rank=0 local_rank=0 backend=nccl"),
        (19.0, "(EngineCore pid=2) INFO [gpu_model_runner.py:1] Starting to load model /tmp/r1..."),
        (19.5, "Loading safetensors checkpoint shards:  50% Completed | 7/14"),  # no phase of its own
        (25.0, "(EngineCore pid=2) INFO [gpu_model_runner.py:2] Model loading took 61.2 GiB and 6.0 seconds"),
        (30.0, "(EngineCore pid=2) INFO [backends.py:1] Dynamo bytecode transform time: 3.50 s"),
        (31.0, "(EngineCore pid=2) INFO [decorators.py:1] Directly load AOT compilation from path /c/model"),
        (33.0, "(EngineCore pid=2) INFO [monitor.py:1] torch.compile took 6.00 s in total"),  # began at 27
        (40.0, "(EngineCore pid=2) INFO [gpu_worker.py:1] Available KV cache memory: 8.1 GiB"),
        (41.0, "(EngineCore pid=2) INFO [gpu_model_runner.py:3] Capturing CUDA graphs (decode, FULL): 100%"),
        (44.0, "(EngineCore pid=2) INFO [gpu_model_runner.py:4] Graph capturing finished in 3 secs, took 0.5 GiB"),
        (46.0, "(EngineCore pid=2) INFO [core.py:2] init engine (profile, create kv cache, warmup model) took 21 s"),
    ]
    phases = start_timeline(lines, ready_s=60.0)
    assert phases == {
        "process start and imports": 6.0,
        "config and tokenizer": 1.0,
        "engine process start": 11.0,  # from the server's last line to the engine's device init
        "device init": 1.0,
        "weight loading": 6.0,
        "memory profiling": 2.0 + 7.0,  # 25-27 and 33-40, around the compile
        "torch.compile (cache hit)": 6.0,
        "KV cache": 1.0,
        "CUDA graph capture": 3.0,
        "warm-up": 2.0,
        "server start": 14.0,
    }
    assert sum(phases.values()) == pytest.approx(60.0)
    assert all(name.split(" (")[0] in START_PHASES for name in phases)
    text = "\n".join(line for _, line in lines)
    assert compile_cache(text) == "hit"
    assert compile_cache(text + "\nINFO Compiling a graph for compile range (1, 8192) takes 30.1 s") == "miss"
    assert compile_cache("eager mode, a CPU") is None
    # The spinner names the phase the start is in from the lines so far.
    assert loading_step("\n".join(line for _, line in lines[:9])) == "loading the compiled model (compile cache hit)"
    assert loading_step("\n".join(line for _, line in lines[:10])) == "profiling memory"
    assert loading_step("nothing from vLLM yet") is None
    # A log without phase lines is all "process start" up to ready; times past ready count up to it.
    assert start_timeline([], ready_s=5.0) == {"process start and imports": 5.0}
    assert start_timeline([(9.0, "INFO non-default args")], ready_s=5.0) == {
        "process start and imports": 5.0,
        "config and tokenizer": 0.0,
    }


def test_vllms_own_stamps_give_each_lines_second():
    import time

    from stepaudio_cli.vllm_log import stamped_lines

    launched = time.mktime((2026, 12, 31, 23, 59, 50, 0, 0, -1))
    log = "\n".join(
        [
            "(APIServer pid=1) INFO 12-31 23:59:56 [api_utils.py:286] non-default args: {}",
            "Loading safetensors checkpoint shards: 100% Completed",  # no stamp: left out
            "(EngineCore pid=2) WARNING 01-01 00:00:03 [core.py:1] past midnight, into the next year",
            "(EngineCore pid=2) INFO 13-45 99:00:00 [x.py:1] not a date",
        ]
    )
    assert stamped_lines(log, launched) == [
        (6.5, "(APIServer pid=1) INFO 12-31 23:59:56 [api_utils.py:286] non-default args: {}"),
        (13.5, "(EngineCore pid=2) WARNING 01-01 00:00:03 [core.py:1] past midnight, into the next year"),
    ]


def _result(device: str, **sizes):
    from stepaudio_cli.bench import BenchResult

    return BenchResult(
        quantization="bf16",
        kv_cache_dtype="auto",
        device=device,
        engine_start_s=25.0,
        kv_cache_tokens=40_000,
        requests_at_max_len=4,
        prompt_tokens=147,
        ttft_s=0.05,
        decode_ms_per_token=18.0,
        floor_ms_per_token=None,
        concurrency=sizes.get("concurrency", 4),
        throughput_tok_s=100.0,
        throughput_runs_tok_s=[100.0] * sizes.get("runs", 1),
        typical_answer_s=47.0,
        batch_slots=4,
        clips_per_device_hour=135.8,
        start_phases_s={},
    )


@pytest.mark.parametrize(
    ("gpus", "device", "first", "per_hour"),
    [
        (
            [],
            "cpu",
            "Benchmarking the tiny test model, bf16, on the CPU: engine start, first token for a 10 s clip, "
            "a 128-token decode, 4 requests of 128 tokens in flight (a warm-up, then 1 timed run); lighter than "
            "a GPU's 32 x 256 tokens, best of 3 (--concurrency, --new-tokens, --runs). This takes about ",
            "clips/CPU-hour",
        ),
        (
            ["NVIDIA H100 80GB HBM3"],
            "NVIDIA H100 80GB HBM3",
            "Benchmarking the tiny test model, bf16, on the H100: engine start, first token for a 10 s clip, "
            "a 256-token decode, 32 requests of 256 tokens in flight (a warm-up, then 3 timed runs). "
            "This takes about ",
            "clips/H100-hour",
        ),
    ],
)
def test_bench_says_first_what_it_runs_and_labels_hours_by_its_device(monkeypatch, gpus, device, first, per_hour):
    """The command's words, with the engine run replaced: the plan line comes first, the sizes
    left unset follow the device, and per-hour figures name the device they ran on."""
    from stepaudio_cli import bench
    from stepaudio_cli import gpus as gpu_module

    monkeypatch.setattr(gpu_module, "visible", lambda: [gpu_module.Gpu(name, 80 << 30) for name in gpus])
    ran = []

    async def fake_run(settings, on_status):
        ran.append(settings)
        return [_result(device, concurrency=settings.concurrency, runs=settings.runs)]

    monkeypatch.setattr(bench, "run", fake_run)
    result = CliRunner().invoke(app, ["bench", "--tiny"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0].startswith(first)
    assert per_hour in result.stdout and "GPU-hour" not in result.stdout.replace(per_hour, "")
    assert "decode, 1 request (official sampling, in-process)" in result.stdout
    (settings,) = ran
    sizes = (4, 128, 1) if not gpus else (32, 256, 3)
    assert (settings.concurrency, settings.new_tokens, settings.runs) == sizes
    assert f"throughput, {sizes[0]} requests (best of {sizes[2]})" in result.stdout


def test_sizes_given_are_kept_on_a_cpu(monkeypatch):
    from stepaudio_cli import bench, gpus

    monkeypatch.setattr(gpus, "visible", lambda: [])
    planned = bench.plan(bench.BenchSettings(tiny=True, concurrency=32, runs=2))
    assert (planned.settings.concurrency, planned.settings.new_tokens, planned.settings.runs) == (32, 128, 2)
    assert "lighter" in planned.describe()  # new_tokens was still the CPU's
    heavy = bench.plan(bench.BenchSettings(tiny=True, concurrency=32, new_tokens=256, runs=3))
    assert "lighter" not in heavy.describe() and heavy.estimate_s > planned.estimate_s


def test_device_labels():
    from stepaudio_cli.bench import device_label

    assert device_label("cpu") == "CPU"
    assert device_label("NVIDIA H100 80GB HBM3") == "H100"
    assert device_label("NVIDIA H200") == "H200"
    assert device_label("NVIDIA A100-SXM4-80GB") == "A100"
    assert device_label("NVIDIA GeForce RTX 4090") == "RTX 4090"
