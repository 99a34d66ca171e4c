"""One-shot questions in a row: whole-process wall time of each `stepaudio ask`, in-process
(`--keep-alive 0`, today's behaviour) against a resident engine (`--keep-alive 5m`).

Each ask is a fresh `python -m stepaudio_cli ask --json` process on the same clip, with a
fixed answer length (--max-tokens; random weights never end their reasoning, so every ask
generates exactly that many tokens; the JSON record shows the count). For each ask it prints
the wall time from launch to exit, the record's time to first token and total, and the first
token measured from the launch (wall - total + first token: the part a user waits for).

    # on a lent GPU after the ../shared/gpu kit (R1's real sizes, random weights):
    python3 benchmarks/resident_ask.py --keep-alive 5m --asks 3      # resident
    python3 benchmarks/resident_ask.py --keep-alive 0 --asks 2       # today: each ask loads the model

--budget stops launching asks once the next would likely run past it (seconds since the
script started); a resident engine left running is stopped at the end (`stepaudio stop --all`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep-alive", default="5m", help="0: in-process (today); else a resident engine")
    p.add_argument("--asks", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=2650, help="the answer's length in tokens")
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--seconds", type=float, default=10.0, help="the clip's length")
    p.add_argument("--model", default="/tmp/r1", help="checkpoint folder (made with R1's real sizes if missing)")
    p.add_argument("--budget", type=float, default=500.0, help="seconds; no ask starts that would end past it")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    args = p.parse_args()
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("STEPAUDIO_LOAD_FORMAT", "dummy")
    if not (Path(args.model) / "config.json").exists():
        from stepaudio_cli.bench import real_size_checkpoint

        real_size_checkpoint(Path(args.model), tiny=False)
    clip = args.out / "resident-clip.wav"
    _write_clip(clip, args.seconds)
    cmd = [
        sys.executable,
        "-m",
        "stepaudio_cli",
        "ask",
        "-m",
        args.model,
        "--json",
        "--keep-alive",
        args.keep_alive,
        "--max-tokens",
        str(args.max_tokens),
        "--max-model-len",
        str(args.max_model_len),
        str(clip),
        "What is happening in this recording?",
    ]
    mode = "in-process" if args.keep_alive in ("0", "0s") else f"resident (keep-alive {args.keep_alive})"
    print(f"{mode}: {' '.join(cmd[2:])}", flush=True)
    resident = args.keep_alive not in ("0", "0s")
    expect = 0.0  # what the next ask should take: the whole run in-process, the answer once resident
    rows = []
    try:
        for i in range(1, args.asks + 1):
            if i > 1 and time.monotonic() - began + expect > args.budget:
                print(f"ask {i}: skipped (the budget of {args.budget:.0f} s would run out)")
                break
            t0 = time.monotonic()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            last = time.monotonic() - t0
            (args.out / f"resident-ask{i}-{args.keep_alive}.err").write_text(done.stderr)
            if done.returncode != 0:
                print(f"ask {i}: exit {done.returncode} after {last:.1f} s: {done.stderr.strip()[-500:]}")
                return 1
            record = json.loads(done.stdout)
            t = record.get("timings") or {}
            first, total = t.get("time_to_first_token") or 0.0, t.get("total") or 0.0
            tokens = (record.get("usage") or {}).get("completion_tokens")
            expect = total + 5.0 if resident else last
            rows.append((i, last, first, total, last - total + first, tokens))
            print(
                f"ask {i}: wall {last:6.1f} s | first token {first:5.2f} s after the request, "
                f"{last - total + first:6.1f} s after launch | answer {total:5.1f} s | "
                f"{tokens} tokens | start+exit overhead {last - total:5.1f} s",
                flush=True,
            )
    finally:
        if resident:
            subprocess.run([sys.executable, "-m", "stepaudio_cli", "ps"], env=env)
            subprocess.run([sys.executable, "-m", "stepaudio_cli", "stop", "--all"], env=env)
    (args.out / f"resident-{args.keep_alive}.json").write_text(
        json.dumps(
            {
                "mode": mode,
                "asks": [
                    dict(zip(("ask", "wall", "first_token", "answer", "first_from_launch", "tokens"), r)) for r in rows
                ],
            },
            indent=1,
        )
    )
    return 0


def _write_clip(path: Path, seconds: float) -> None:
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * 44100)) / 44100
    x = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * np.random.default_rng(0).normal(size=t.size)
    sf.write(str(path), np.stack([x, x], 1).astype(np.float32), 44100)


if __name__ == "__main__":
    raise SystemExit(main())
