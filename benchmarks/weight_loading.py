"""How fast each of vLLM's weight loaders reads a real-size pre-quantized checkpoint from disk.

Writes R1's real sizes as a W4A16 checkpoint (compressed-tensors pack-quantized, group 128, the
community builds' layout; random values; about 20 GB in 5 GB shards), evicts it from the page
cache (posix_fadvise DONTNEED, and drop_caches where allowed), reads it once with `cat` for the
disk's rate, then starts `stepaudio serve` on it with each loader that imports here
(benchmarks/start_timeline.py, eager mode so no compile hides the load), evicting the files
before each:

    python benchmarks/weight_loading.py --dir /tmp/r1-w4a16 --out $OUT \\
        [--loaders auto fastsafetensors runai_streamer multithread]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GROUP = 128
SHARD_BYTES = 5 << 30
LOADERS = {
    "auto": ([], None),
    "fastsafetensors": (["--load-format", "fastsafetensors"], "fastsafetensors"),
    "runai_streamer": (["--load-format", "runai_streamer"], "runai_model_streamer"),
    "multithread": (
        ["--model-loader-extra-config", json.dumps({"enable_multithread_load": True, "num_threads": 8})],
        None,
    ),
}


def shapes() -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of every tensor: "packed" int32, "scale" and "bf16" bfloat16, "shape" int64."""
    from stepaudio_cli.checkpoint import R1_AUDIO_SIZES, R1_TEXT_SIZES

    t, a = R1_TEXT_SIZES, R1_AUDIO_SIZES
    h, inter, vocab = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    kv = t["num_key_value_heads"] * h // t["num_attention_heads"]
    out: list[tuple[str, tuple[int, ...], str]] = [("model.embed_tokens.weight", (vocab, h), "bf16")]
    linears = {
        "self_attn.q_proj": (h, h),
        "self_attn.k_proj": (kv, h),
        "self_attn.v_proj": (kv, h),
        "self_attn.o_proj": (h, h),
        "mlp.gate_proj": (inter, h),
        "mlp.up_proj": (inter, h),
        "mlp.down_proj": (h, inter),
    }
    for i in range(t["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for name, (o, n) in linears.items():
            out += [
                (p + name + ".weight_packed", (o, n // 8), "packed"),
                (p + name + ".weight_scale", (o, n // GROUP), "scale"),
                (p + name + ".weight_shape", (2,), f"shape:{o},{n}"),
            ]
        for name in ("q_proj", "k_proj", "v_proj"):
            out.append((p + f"self_attn.{name}.bias", (h if name == "q_proj" else kv,), "bf16"))
        out += [(p + "input_layernorm.weight", (h,), "bf16"), (p + "post_attention_layernorm.weight", (h,), "bf16")]
    out += [("model.norm.weight", (h,), "bf16"), ("lm_head.weight", (vocab, h), "bf16")]
    d, mels, ctx = a["n_audio_state"], a["n_mels"], a["n_audio_ctx"]
    out += [
        ("encoder.conv1.weight", (d, mels, 3), "bf16"),
        ("encoder.conv1.bias", (d,), "bf16"),
        ("encoder.conv2.weight", (d, d, 3), "bf16"),
        ("encoder.conv2.bias", (d,), "bf16"),
        ("encoder.positional_embedding.weight", (ctx, d), "bf16"),
        ("encoder.after_norm.weight", (d,), "bf16"),
        ("encoder.after_norm.bias", (d,), "bf16"),
    ]
    for i in range(a["n_audio_layer"]):
        p = f"encoder.blocks.{i}."
        for name in ("query", "value", "out"):
            out += [(p + f"attn.{name}.weight", (d, d), "bf16"), (p + f"attn.{name}.bias", (d,), "bf16")]
        out.append((p + "attn.key.weight", (d, d), "bf16"))
        for ln in ("attn_ln", "mlp_ln"):
            out += [(p + f"{ln}.weight", (d,), "bf16"), (p + f"{ln}.bias", (d,), "bf16")]
        out += [
            (p + "mlp.0.weight", (4 * d, d), "bf16"),
            (p + "mlp.0.bias", (4 * d,), "bf16"),
            (p + "mlp.2.weight", (d, 4 * d), "bf16"),
            (p + "mlp.2.bias", (d,), "bf16"),
        ]
    out += [
        ("adapter.conv.weight", (d, d, 3), "bf16"),
        ("adapter.conv.bias", (d,), "bf16"),
        ("adapter.linear1.weight", (2048, d), "bf16"),
        ("adapter.linear1.bias", (2048,), "bf16"),
        ("adapter.linear2.weight", (h, 2048), "bf16"),
        ("adapter.linear2.bias", (h,), "bf16"),
    ]
    return out


def write_checkpoint(directory: Path) -> tuple[int, float]:
    """(bytes written, seconds): config, tokenizer and the shards, each fsynced."""
    import torch
    from safetensors.torch import save_file

    from stepaudio_cli.bench import PREQUANTIZED, real_size_checkpoint

    real_size_checkpoint(directory, tiny=False, prequantized="w4a16")
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"] = GROUP
    assert PREQUANTIZED["w4a16"]["config_groups"]["group_0"]["weights"]["group_size"] == GROUP
    (directory / "config.json").write_text(json.dumps(config))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)
    t0 = time.perf_counter()
    shard: dict[str, torch.Tensor] = {}
    size, total, index, n = 0, 0, {}, 0

    def flush() -> None:
        nonlocal shard, size, n
        if not shard:
            return
        n += 1
        name = f"model-{n:05d}.safetensors"
        path = directory / name
        save_file(shard, str(path))
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        index.update(dict.fromkeys(shard, name))
        shard, size = {}, 0

    for name, shape, kind in shapes():
        if kind == "packed":
            value = torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, device=dev, generator=gen)
        elif kind.startswith("shape:"):
            value = torch.tensor([int(x) for x in kind[6:].split(",")], dtype=torch.int64)
        elif kind == "scale":
            value = (torch.rand(shape, device=dev, generator=gen) * 0.002 + 0.001).to(torch.bfloat16)
        else:
            value = (torch.randn(shape, device=dev, generator=gen) * 0.02).to(torch.bfloat16)
        value = value.cpu().contiguous()
        shard[name] = value
        size += value.numel() * value.element_size()
        total += value.numel() * value.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": index})
    )
    return total, time.perf_counter() - t0


def evict(directory: Path) -> str:
    """Take the checkpoint's files out of the page cache; how."""
    for path in directory.glob("*.safetensors"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "posix_fadvise + drop_caches"
    except OSError:
        return "posix_fadvise"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("/tmp/r1-w4a16"))
    p.add_argument("--out", type=Path, default=Path("/tmp/out"))
    p.add_argument("--loaders", nargs="*", default=list(LOADERS))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if not (args.dir / "model.safetensors.index.json").exists():
        total, seconds = write_checkpoint(args.dir)
        report["written"] = {"bytes": total, "seconds": round(seconds, 1)}
        print(f"wrote {total / 1e9:.1f} GB in {seconds:.0f} s", flush=True)
    files = sorted(args.dir.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    report["evicted_by"] = evict(args.dir)
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    seconds = time.perf_counter() - t0
    report["cat"] = {"bytes": total, "seconds": round(seconds, 2), "GB_per_s": round(total / seconds / 1e9, 2)}
    t0 = time.perf_counter()
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)
    report["cat_cached_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(report), flush=True)
    for loader in args.loaders:
        flags, module = LOADERS[loader]
        if module and importlib.util.find_spec(module) is None:
            report[loader] = f"{module} is not installed"
            continue
        report[f"{loader}_evicted_by"] = evict(args.dir)
        cmd = [sys.executable, str(Path(__file__).parent / "start_timeline.py"), "--model", str(args.dir)]
        cmd += ["--label", f"load-{loader}", "--out", str(args.out), "--", "--enforce-eager", *flags]
        done = subprocess.run(cmd, capture_output=True, text=True)
        try:
            timeline = json.loads((args.out / f"timeline-load-{loader}.json").read_text())
        except (OSError, ValueError):
            report[loader] = f"exit {done.returncode}: {done.stdout[-1500:]} {done.stderr[-1500:]}"
            continue
        took = [line for _, line in timeline["lines"] if "Loading weights took" in line or "Model loading took" in line]
        report[loader] = {
            "ready_s": timeline.get("ready_s"),
            "phases": timeline.get("phases"),
            "log": took,
            "GB_per_s": None,
        }
        loading = (timeline.get("phases") or {}).get("weight loading")
        if loading:
            report[loader]["GB_per_s"] = round(total / loading / 1e9, 2)
        print(loader, json.dumps(report[loader]), flush=True)
        (args.out / "weight_loading.json").write_text(json.dumps(report, indent=1))
    (args.out / "weight_loading.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
