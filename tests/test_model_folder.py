"""The up-front check of a model folder (config, every weight shard whole) and what is said
when vLLM still fails to start: one line, no engine started. Needs no engine."""

from __future__ import annotations

import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
from conftest import tone, write_wav
from typer.testing import CliRunner

from stepaudio_cli import serve
from stepaudio_cli.checkpoint import check_checkpoint
from stepaudio_cli.cli import app
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.errors import UserError
from stepaudio_cli.tiny_checkpoint import build_checkpoint
from stepaudio_cli.vllm_log import explain, root_cause
from stepaudio_cli.weight_files import safetensors_problem, weight_problems

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("whole"), seed=1)


@pytest.fixture
def weightless(ckpt, tmp_path) -> Path:
    """An interrupted copy: config and tokenizer, no weights."""
    folder = tmp_path / "weightless"
    shutil.copytree(ckpt, folder)
    (folder / "model.safetensors").unlink()
    return folder


def _safetensors(path: Path, data_bytes: int, header: object = None) -> None:
    """A safetensors file whose header promises ``data_bytes``; sparse, so a 67 GB one is cheap."""
    header = (
        header
        if header is not None
        else {"w": {"dtype": "BF16", "shape": [data_bytes // 2], "data_offsets": [0, data_bytes]}}
    )
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + data_bytes)


def test_a_whole_folder_passes(ckpt):
    assert check_checkpoint(ckpt)["architectures"]
    assert weight_problems(ckpt) == []


def test_a_weightless_folder_is_one_line_before_any_engine_starts(weightless, tmp_path):
    clip = write_wav(tmp_path / "a.wav", tone(1.0))
    result = runner.invoke(app, ["ask", "--model", str(weightless), str(clip), "Q?"])
    assert result.exit_code == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert str(weightless) in line and "no weights" in line and "stepaudio download --check" in line
    assert "Traceback" not in result.stderr and "Loading" not in line


def test_dummy_weights_need_only_the_config(weightless, monkeypatch):
    """STEPAUDIO_LOAD_FORMAT=dummy (the GPU checks' config-only folders) goes on to vLLM."""
    import stepaudio_cli.engines.local as local

    def reached(*args, **kwargs):
        raise UserError("reached vLLM")

    monkeypatch.setattr(local, "import_vllm", reached)
    monkeypatch.setenv("STEPAUDIO_LOAD_FORMAT", "dummy")
    clip = write_wav(weightless.parent / "a.wav", tone(1.0))
    result = runner.invoke(app, ["ask", "--keep-alive", "0", "--model", str(weightless), str(clip), "Q?"])
    assert "reached vLLM" in result.stderr, result.stderr
    # serve: `-- --load-format dummy` goes to vLLM, so the check asks for no weights either.
    opts = serve.ServeOptions(engine=EngineSettings(model=str(weightless)), port=1, extra=["--load-format", "dummy"])
    monkeypatch.setattr(serve, "check_port_free", lambda host, port: None)
    assert "--load-format" in serve.prepare(opts)
    with pytest.raises(UserError, match="no weights"):
        serve.prepare(serve.ServeOptions(engine=EngineSettings(model=str(weightless)), port=1))


def test_every_shard_the_index_names_is_checked(weightless):
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = {"metadata": {}, "weight_map": {f"t{i}": name for i, name in enumerate(names)}}
    (weightless / "model.safetensors.index.json").write_text(json.dumps(index))
    _safetensors(weightless / names[0], 67 * 10**9 // 3)  # whole (sparse): only its header is read
    _safetensors(weightless / names[1], 1000)
    with open(weightless / names[1], "r+b") as f:
        f.truncate(500)  # an interrupted copy
    problems = weight_problems(weightless)
    assert len(problems) == 2 and problems[1] == f"{names[2]}: missing", problems
    assert problems[0].startswith(f"{names[1]}: size 500 bytes, expected ")
    assert "incomplete download" in problems[0]
    expected = r"incomplete model folder: model-00002-of-00003\.safetensors: .* \(and 1 more\)"
    with pytest.raises(UserError, match=expected):
        check_checkpoint(weightless)


@pytest.mark.parametrize("dropped", ["model.layers.1.mlp.down_proj.weight", "lm_head.weight"])
def test_a_linear_layer_without_weights_is_refused_before_vllm_loads_it(ckpt, tmp_path, dropped):
    """vLLM's own check skips linear layers: it would leave them uninitialised and answer
    nonsense. Every shard is whole here; one layer's tensor is just not in them."""
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "converted"
    shutil.copytree(ckpt, folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors[dropped]
    save_file(tensors, str(folder / "model.safetensors"))
    assert weight_problems(folder) == []
    clip = write_wav(tmp_path / "a.wav", tone(1.0))
    result = runner.invoke(app, ["ask", "--keep-alive", "0", "--model", str(folder), str(clip), "Q?"])
    assert result.exit_code == 2, result.stderr
    layer = dropped.rsplit(".", 1)[0]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {folder}: the weights have no tensor for {layer}: vLLM would load the model with uninitialised "
        "values there and answer nonsense (a broken conversion?)"
    )
    # Tied embeddings: lm_head is the embedding, no tensor of its own.
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["tie_word_embeddings"] = True
    (folder / "config.json").write_text(json.dumps(config))
    if dropped == "lm_head.weight":
        assert check_checkpoint(folder)
    else:
        with pytest.raises(UserError, match=layer):
            check_checkpoint(folder)


@pytest.mark.parametrize("header", [[1, 2], {"w": 5}, {"w": {"data_offsets": "x"}}, {"w": {"data_offsets": [0, "9"]}}])
def test_a_hostile_safetensors_header_is_a_problem_not_a_crash(tmp_path, header):
    _safetensors(tmp_path / "x.safetensors", 0, header=header)
    assert safetensors_problem(tmp_path / "x.safetensors") == "not a safetensors file"


@pytest.mark.parametrize("config", [b"[1, 2]", b"\xff\xfe", b"null", b"{"])
def test_a_config_that_is_not_an_object_is_one_line(weightless, tmp_path, config):
    (weightless / "config.json").write_bytes(config)
    clip = write_wav(tmp_path / "a.wav", tone(1.0))
    result = runner.invoke(app, ["ask", "--model", str(weightless), str(clip), "Q?"])
    assert result.exit_code == 2 and "config.json" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_index_is_named(weightless):
    (weightless / "model.safetensors.index.json").write_text('{"weight_map": [1]}')
    assert weight_problems(weightless)[0].startswith("model.safetensors.index.json: unreadable")


ENGINE_CORE_LOG = """\
INFO 12-03 10:00:01 [core.py:93] Initializing a V1 LLM engine
(EngineCore_DP0 pid=4242) ERROR 12-03 10:00:39 [core.py:708] EngineCore failed to start.
(EngineCore_DP0 pid=4242) ERROR 12-03 10:00:39 [core.py:708] Traceback (most recent call last):
(EngineCore_DP0 pid=4242) ERROR 12-03 10:00:39 [core.py:708]   File "loader.py", line 12, in load
(EngineCore_DP0 pid=4242) ERROR 12-03 10:00:39 [core.py:708] RuntimeError: Cannot find any model weights with `/m`
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_vllm_s_own_root_cause_is_found_in_its_log():
    assert root_cause(ENGINE_CORE_LOG) == "RuntimeError: Cannot find any model weights with `/m`"
    assert explain(ENGINE_CORE_LOG) == root_cause(ENGINE_CORE_LOG)
    assert root_cause("RuntimeError: Engine core initialization failed. See root cause above.") is None
    # A known cause still reads as what to change.
    assert "--max-model-len" in explain("CUDA out of memory. Tried to allocate\n" + ENGINE_CORE_LOG)


def test_serve_s_start_failure_carries_the_engine_s_root_cause(tmp_path):
    """A child that fails as vLLM's server does when its engine process dies: the root cause is
    logged by the engine process, the server itself only says "see root cause above"."""
    from conftest import free_port

    child = (
        "import sys\n"
        "print('(EngineCore_DP0 pid=7) ERROR [core.py:708] ValueError: down_proj.weight has shape (64, 125), "
        "expected (64, 128)', flush=True)\n"
        "raise RuntimeError('Engine core initialization failed. See root cause above. Failed core proc(s): {}')\n"
    )
    server = serve.VllmServerProcess([sys.executable, "-c", child], tmp_path / "serve.log", passthrough=False)
    try:
        with pytest.raises(UserError) as e:
            server.wait_ready(f"http://127.0.0.1:{free_port()}", timeout=60)
    finally:
        server.stop(grace=1)
    assert "ValueError: down_proj.weight has shape (64, 125), expected (64, 128)" in e.value.message
    assert "See root cause above" not in e.value.message
