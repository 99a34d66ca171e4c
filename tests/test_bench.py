"""`stepaudio bench` on the tiny checkpoint: the same code that measures R1 on a GPU."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stepaudio_cli.cli import app
from stepaudio_cli.checkpoint import R1_TEXT_SIZES, weight_bytes

pytestmark = pytest.mark.engine


def test_bench_tiny_reports_every_measure_as_json():
    result = CliRunner().invoke(app, [
        "bench", "--tiny", "--json", "--seconds", "2", "--new-tokens", "8", "--concurrency", "3", "--max-model-len", "2048",
    ])
    assert result.exit_code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["quantization"] == "bf16" and record["device"] == "cpu"
    assert record["engine_start_s"] > 0 and record["ttft_s"] > 0 and record["decode_ms_per_token"] > 0
    assert record["kv_cache_tokens"] >= 2048 and record["requests_at_max_len"] == record["kv_cache_tokens"] // 2048
    assert record["prompt_tokens"] > 2 * 12  # a 2 s clip is 26 audio tokens, with the text around it
    assert record["concurrency"] == 3 and record["throughput_tok_s"] > 0
    assert record["floor_ms_per_token"] is None  # no GPU, no bandwidth to compare against


def test_bench_refuses_bad_options_in_one_line():
    result = CliRunner().invoke(app, ["bench", "--quantization", "int3"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: --quantization must be bf16 or fp8, not 'int3'"


def test_decode_floor_arithmetic():
    # bf16 reads every linear layer and the head once per token; FP8 halves the linear layers.
    bf16, fp8 = weight_bytes(R1_TEXT_SIZES, per_token=True), weight_bytes(R1_TEXT_SIZES, "fp8", per_token=True)
    assert 63e9 < bf16 < 65e9 and 32e9 < fp8 < 34e9
    assert round(1000 * bf16 / 2.95e12, 1) == 21.7  # ms/token at an H100's measured copy bandwidth
