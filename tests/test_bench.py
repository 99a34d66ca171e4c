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
    # vLLM's own log splits the start (on the CPU it reports the profile/KV/warm-up step), inside the whole.
    phases = record["start_phases_s"]
    assert 0 < phases["profile, KV cache, warm-up"] <= record["engine_start_s"]


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


def test_start_phases_count_each_second_once():
    from stepaudio_cli.vllm_log import start_phases

    # vLLM 0.26's lines on an H200 (FP8): its "init engine" time contains compilation and capture.
    log = "\n".join(
        [
            "(EngineCore_DP0 pid=1) INFO [default_loader.py:314] Loading weights took 2.10 seconds",
            "(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:3311] Model loading took 34.6 GiB and 41.73 seconds",
            "(EngineCore_DP0 pid=1) INFO [monitor.py:34] torch.compile takes 35.21 s in total",
            "(EngineCore_DP0 pid=1) INFO [gpu_model_runner.py:4133] Graph capturing finished in 13 secs, took 0.9 GiB",
            "(EngineCore_DP0 pid=1) INFO [core.py:210] init engine (profile, create kv cache, warmup model) "
            "took 71.40 seconds",
        ]
    )
    phases = start_phases(log)
    assert phases == {
        "load weights": 41.7,
        "compile": 35.2,
        "capture CUDA graphs": 13.0,
        "profile, KV cache, warm-up": 23.2,  # 71.4 less what is listed apart
    }
    assert sum(phases.values()) == pytest.approx(41.73 + 71.40, abs=0.2)
    # Newer vLLM says the compilation inside the init line; a log without phases gives none.
    newer = "init engine (profile, create kv cache, warmup model) took 60.00 s (compilation: 20.00 s)"
    assert start_phases(newer) == {"compile": 20.0, "profile, KV cache, warm-up": 40.0}
    assert start_phases("nothing here") == {}


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
