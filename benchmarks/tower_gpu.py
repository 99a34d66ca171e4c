"""The real-size Step-Audio-R1 audio tower (32 x 1280 encoder + adapter to 5120) on a GPU.

Runs the plugin's own tower code (stepaudio_cli/vllm_plugin/tower.py, plain PyTorch) with
random weights: throughput of 25 s chunks in bf16, padded batches vs one chunk at a time,
and bf16 against fp32 on the same inputs. Needs only torch and a CUDA device.

    PYTHONPATH=. python benchmarks/tower_gpu.py [--batch 16] [--iters 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from stepaudio_cli.audio_tokens import CHUNK_SAMPLES, chunk_tokens, mel_frames
from stepaudio_cli.vllm_plugin.tower import Adapter, AudioEncoder, encode_chunks


def build(dtype, device):
    torch.manual_seed(0)
    enc = AudioEncoder(n_mels=128, n_ctx=1500, n_state=1280, n_head=20, n_layer=32)
    ada = Adapter(1280, 5120)
    for m in (enc, ada):
        for p in m.parameters():  # small random weights keep activations in range through 32 layers
            torch.nn.init.normal_(p, std=0.02)
    return enc.to(device, dtype).eval(), ada.to(device, dtype).eval()


def timed(fn, iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    device = "cuda"
    t = mel_frames(CHUNK_SAMPLES)
    feats = torch.randn(args.batch * t, 128, device=device) * 0.5
    lens = [t] * args.batch
    enc16, ada16 = build(torch.bfloat16, device)
    with torch.no_grad():
        batched = timed(lambda: encode_chunks(enc16, ada16, feats, lens), args.iters)
        single = timed(
            lambda: [encode_chunks(enc16, ada16, feats[i * t : (i + 1) * t], [t]) for i in range(args.batch)],
            max(1, args.iters // 2),
        )
        out16 = encode_chunks(enc16, ada16, feats, lens)
        enc32, ada32 = build(torch.float32, device)
        out32 = encode_chunks(enc32, ada32, feats, lens)
    rel = max(float((a.float() - b).norm() / b.norm()) for a, b in zip(out16, out32))
    tokens = chunk_tokens(CHUNK_SAMPLES)
    assert all(o.shape == (tokens, 5120) for o in out16)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"25 s chunks -> {t} mel frames -> {tokens} audio tokens each")
    print(f"{'mode':<28}{'ms/chunk':>10}{'audio s/s':>12}")
    for name, secs in ((f"bf16 batch of {args.batch}", batched), ("bf16 one chunk at a time", single)):
        per = secs / args.batch * 1000
        print(f"{name:<28}{per:>10.2f}{25 / (per / 1000):>12.0f}")
    print(f"batched / one-at-a-time speed-up: {single / batched:.2f}x")
    print(f"bf16 vs fp32 relative error (worst chunk): {rel:.4f}")
    print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
