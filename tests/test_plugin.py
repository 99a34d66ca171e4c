"""The vLLM plugin's parts that run without an engine: front end, tower, registration."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import noise, tone
from reference import whisper_mel

from stepaudio_cli.audio_tokens import adapter_frames, chunk_tokens, encoder_frames, mel_frames
from stepaudio_cli.vllm_plugin.mel import log_mel


@pytest.mark.parametrize("seconds", [0.5, 3.0, 10.0, 25.0])
def test_log_mel_matches_whisper_feature_extractor(seconds):
    samples = noise(seconds, seed=int(seconds * 10)) + tone(seconds)
    ours = log_mel(samples)
    theirs = whisper_mel(samples)
    assert ours.shape == theirs.shape == (128, mel_frames(len(samples)))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-4)


def _tower(seed: int = 0):
    from stepaudio_cli.vllm_plugin.tower import Adapter, AudioEncoder

    torch.manual_seed(seed)
    enc = AudioEncoder(n_mels=128, n_ctx=1500, n_state=64, n_head=2, n_layer=2).eval()
    ada = Adapter(64, 96).eval()
    return enc, ada


@pytest.mark.parametrize("n_samples", [16000, 160000, 400000, 12345])
def test_tower_output_lengths_follow_the_formula(n_samples):
    enc, ada = _tower()
    mel = log_mel(noise(n_samples / 16000))[None]
    with torch.no_grad():
        x, lens = enc(mel, torch.tensor([mel.shape[-1]]))
        y = ada(x)
    assert x.shape[1] == int(lens[0]) == encoder_frames(mel.shape[-1])
    assert y.shape[1] == adapter_frames(x.shape[1]) == chunk_tokens(n_samples)
    assert y.shape[2] == 96


def test_padding_in_a_batch_does_not_change_a_chunk():
    """Chunks of different lengths are batched with padding; each must come out as if alone."""
    from stepaudio_cli.vllm_plugin.tower import encode_chunks

    enc, ada = _tower(1)
    chunks = [log_mel(noise(s, seed=i)).T for i, s in enumerate([2.0, 7.3, 25.0])]
    lens = [c.shape[0] for c in chunks]
    with torch.no_grad():
        together = encode_chunks(enc, ada, torch.cat(chunks), lens)
        alone = [encode_chunks(enc, ada, c, [c.shape[0]])[0] for c in chunks]
    for a, b in zip(together, alone):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_registration_is_idempotent_and_visible_to_vllm():
    code = (
        "from stepaudio_cli.vllm_plugin import register\n"
        "register(); register()\n"
        "from vllm import ModelRegistry\n"
        "from vllm.reasoning import ReasoningParserManager\n"
        "from transformers import AutoConfig\n"
        "assert 'StepAudio2ForCausalLM' in ModelRegistry.get_supported_archs()\n"
        "assert 'step_audio_r1' in ReasoningParserManager.list_registered()\n"
        "from stepaudio_cli.checkpoint import make_config\n"
        "for model_type in ('step_audio_2', 'step_audio_qwen2'):\n"
        "    raw = make_config(); raw.pop('model_type')\n"
        "    cfg = AutoConfig.for_model(model_type, **raw)\n"
        "    print('CFG', type(cfg).__name__, cfg.text_config.hidden_size, cfg.audio_encoder_config.n_audio_ctx)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [ln.split()[1:] for ln in out.stdout.splitlines() if ln.startswith("CFG ")]  # vLLM may log to stdout
    assert lines == [["StepAudio2Config", "5120", "1500"], ["StepAudioQwen2Config", "5120", "1500"]]


def test_plugin_entry_point_is_declared():
    from importlib.metadata import entry_points

    eps = {e.name: e.value for e in entry_points(group="vllm.general_plugins")}
    assert eps.get("step_audio_r1") == "stepaudio_cli.vllm_plugin:register"


def test_vllm_s_server_takes_its_api_key_from_the_environment():
    """`serve` hands the key to vLLM as VLLM_API_KEY (never argv): the installed vLLM must read
    it there when no --api-key is given (runs on every vLLM of the CI window)."""
    from pathlib import Path

    import vllm
    import vllm.envs as envs

    assert "VLLM_API_KEY" in envs.environment_variables
    entrypoints = Path(vllm.__file__).parent / "entrypoints"
    users = [p for p in entrypoints.rglob("*.py") if "envs.VLLM_API_KEY" in p.read_text(errors="replace")]
    assert users, "no vLLM server code reads envs.VLLM_API_KEY"
