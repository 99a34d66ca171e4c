"""The GPUs this process can use: the one place that counts them."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from dataclasses import dataclass


@dataclass
class Gpu:
    name: str
    memory: int  # bytes


def visible() -> list[Gpu]:
    """CUDA devices as torch sees them (honours CUDA_VISIBLE_DEVICES); none without torch."""
    if importlib.util.find_spec("torch") is None:
        return []
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - any torch/driver trouble means "no usable GPU"
        return []
    return [Gpu(p.name, p.total_memory) for p in props]


def count_cheap() -> int:
    """Visible NVIDIA GPUs without importing torch (serve's parent process stays light)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and d.strip() != "-1"])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def memory_by_pid() -> dict[int, int]:
    """GPU memory (MiB) each process holds, from nvidia-smi; empty when it cannot be told."""
    import shutil

    if not shutil.which("nvidia-smi"):
        return {}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    used: dict[int, int] = {}
    for line in out.splitlines():
        try:
            pid, mib = (int(x) for x in line.split(","))
        except ValueError:
            continue
        used[pid] = used.get(pid, 0) + mib
    return used
