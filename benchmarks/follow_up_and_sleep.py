"""Follow-up questions and sleep, on the resident engine, each `stepaudio ask` a new process timed
from launch (as a user runs it):

1. a first question about a recording (starts the engine), then the same question again (warm),
2. a follow-up (`ask -c`: the earlier turn is sent again, so vLLM's prefix cache serves it),
3. the engine falls asleep after --keep-alive (GPU memory read while it sleeps), then a question wakes it,
4. with --long: a 2-hour recording (windows), then a follow-up about it.

    python3 benchmarks/follow_up_and_sleep.py --model /tmp/r1 --minutes 10 --long --out $OUT

Run with STEPAUDIO_LOAD_FORMAT=dummy for R1's real sizes with random weights (scripts/gpu-check.sh
followup). Prints one line per step and writes follow-up-sleep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SA = [sys.executable, "-m", "stepaudio_cli"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--minutes", type=float, default=10.0, help="length of the recording asked about")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-model-len", type=int, default=16384)
    p.add_argument("--keep-alive", default="20s", help="then it sleeps (on a GPU)")
    p.add_argument("--long", action="store_true", help="also a 2-hour recording and a follow-up")
    p.add_argument("--out", type=Path, default=Path("/tmp/out"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.out / "recording.wav"
    _write_clip(clip, args.minutes * 60)
    common = ["--json", "--keep-alive", args.keep_alive, "--sleep-for", "10m", "--max-tokens", str(args.max_tokens)]
    common += ["-m", args.model, "--max-model-len", str(args.max_model_len)]
    rows: dict[str, dict] = {}

    def save() -> None:
        (args.out / "follow-up-sleep.json").write_text(json.dumps(rows, indent=1))

    def ask(name: str, *extra: str) -> dict:
        t0 = time.monotonic()
        done = subprocess.run([*SA, "ask", *common, *extra], capture_output=True, text=True)
        wall = time.monotonic() - t0
        (args.out / f"{name}.err").write_text(done.stderr)
        if done.returncode != 0:
            raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr.strip()[-600:]}")
        record = json.loads(done.stdout)
        t = record["timings"]
        row = {
            "wall_s": round(wall, 2),
            "first_token_after_launch_s": round(wall - t["total"] + t["time_to_first_token"], 2),
            "first_token_after_request_s": t["time_to_first_token"],
            "prompt_tokens": record["usage"]["prompt_tokens"],
            "turn": record.get("turn"),
        }
        rows[name] = row
        print(f"{name}: {row}", flush=True)
        save()  # after every step: a run cut short keeps what it measured
        return record

    try:
        ask("first question (starts the engine)", str(clip), "What is happening in this recording?")
        ask("same question again (warm)", str(clip), "What is happening in this recording?")
        ask("follow-up (ask -c)", "-c", "And what happens at the end?")
        asleep_after = _wait_for_state("asleep", timeout=180)
        rows["asleep"] = {"after_s": asleep_after, "gpu_mib_used_asleep": _gpu_mib()}
        print(f"asleep: {rows['asleep']}", flush=True)
        save()
        ask("question after sleep (wakes it)", str(clip), "What is happening in this recording?")
        rows["awake"] = {"gpu_mib_used": _gpu_mib()}
        if args.long:
            long = args.out / "two-hours.wav"
            _write_clip(long, 2 * 3600)
            ask("2-hour recording, first question (windows)", str(long), "What happens in this recording?")
            ask("2-hour recording, follow-up (ask -c)", "-c", "What happens at the end?")
    finally:
        subprocess.run([*SA, "ps"])
        subprocess.run([*SA, "stop", "--all"])
        save()
    return 0


def _wait_for_state(state: str, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        listed = subprocess.run([*SA, "ps"], capture_output=True, text=True).stdout
        if f"\t{state}\t" in listed:
            return round(time.monotonic() - t0, 1)
        time.sleep(1)
    raise SystemExit(f"the engine was not {state} after {timeout:.0f} s:\n{listed}")


def _gpu_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True
        ).stdout
        return sum(int(x) for x in out.split())
    except (OSError, ValueError):
        return None


def _write_clip(path: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)
    sf.write(str(path), x.astype(np.float32), sr)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
