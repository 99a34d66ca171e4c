"""Where an engine start's seconds go: `stepaudio serve` started as the resident engines start it,
every line of vLLM's log stamped with the second it arrived, then the first request's first token.

    python benchmarks/start_timeline.py --model /tmp/r1 --label cold --out $OUT -- --load-format dummy
    python benchmarks/start_timeline.py --model /tmp/r1 --label warm --sleep-wake --out $OUT -- --load-format dummy

Writes ``timeline-LABEL.json`` (launch to ready, each log line with its arrival second, the
phases :func:`stepaudio_cli.vllm_log.start_timeline` names, the first token, and with
``--sleep-wake`` the GPU memory asleep and the seconds to wake) and prints a summary.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np


def gpu_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
        return sum(int(x) for x in out.split())
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def wav_b64(seconds: float = 10.0) -> str:
    import soundfile as sf

    t = np.arange(int(seconds * 16000)) / 16000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


class Tail(threading.Thread):
    """Each line appended to ``path``, with the seconds since ``t0`` when it was seen."""

    def __init__(self, path: Path, t0: float) -> None:
        super().__init__(daemon=True)
        self.path, self.t0 = path, t0
        self.lines: list[tuple[float, str]] = []
        self.done = threading.Event()

    def run(self) -> None:
        pos, rest = 0, b""
        while not self.done.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                chunk = b""
            now = time.time() - self.t0
            if chunk:
                pos += len(chunk)
                parts = (rest + chunk).split(b"\n")
                rest = parts.pop()
                self.lines += [(round(now, 3), p.decode(errors="replace")) for p in parts]
            time.sleep(0.02)


def first_token(client, model: str, audio: str) -> float:
    t0 = time.perf_counter()
    body = {
        "model": model,
        "max_tokens": 2,
        "stream": True,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is happening?"},
                    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                ],
            }
        ],
    }
    with client.stream("POST", "/v1/chat/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:") and '"delta"' in line and ('"content"' in line or '"reasoning' in line):
                return time.perf_counter() - t0
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--out", type=Path, default=Path("/tmp/out"))
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--max-model-len", type=int, default=8192)
    p.add_argument("--sleep-wake", action="store_true", help="sleep and wake the ready server (vLLM sleep mode)")
    p.add_argument("vllm", nargs="*", help="vLLM flags (after --)")
    args = p.parse_args()
    import httpx

    from stepaudio_cli.vllm_log import start_timeline

    args.out.mkdir(parents=True, exist_ok=True)
    log = Path("/tmp") / f"timeline-{args.label}.log"  # $OUT brings back few files
    log.unlink(missing_ok=True)
    vllm = list(args.vllm)
    env = dict(os.environ)
    if args.sleep_wake:
        vllm.append("--enable-sleep-mode")
        env["VLLM_SERVER_DEV_MODE"] = "1"
    cmd = [sys.executable, "-m", "stepaudio_cli", "serve", args.model, "--port", str(args.port)]
    cmd += ["--max-model-len", str(args.max_model_len), "--log-file", str(log), "--", *vllm]
    result: dict = {"label": args.label, "command": cmd[2:], "gpu_mib_before": gpu_mib()}
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = Tail(log, t0)
    tail.start()
    url = f"http://127.0.0.1:{args.port}"
    client = httpx.Client(base_url=url, timeout=5)
    ready = None
    while proc.poll() is None and time.time() - t0 < 900:
        try:
            if client.get("/health").status_code == 200:
                ready = time.time() - t0
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    result["ready_s"] = ready
    if ready is not None:
        model = client.get("/v1/models").json()["data"][0]["id"]
        audio = wav_b64()
        result["first_token_s"] = first_token(client, model, audio)
        result["first_token_after_launch_s"] = round(time.time() - t0, 2)
        result["second_request_first_token_s"] = first_token(client, model, audio)
        result["gpu_mib_ready"] = gpu_mib()
        if args.sleep_wake:
            s = time.perf_counter()
            client.post("/sleep", params={"level": "1"}, timeout=300).raise_for_status()
            result["sleep_s"] = time.perf_counter() - s
            time.sleep(2)
            result["gpu_mib_asleep"] = gpu_mib()
            s = time.perf_counter()
            client.post("/wake_up", timeout=300).raise_for_status()
            result["wake_s"] = time.perf_counter() - s
            result["first_token_after_wake_s"] = first_token(client, model, audio)
            result["wake_to_first_token_s"] = time.perf_counter() - s
            result["gpu_mib_awake"] = gpu_mib()
    stop = time.time()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
    result["stop_s"] = round(time.time() - stop, 2)
    time.sleep(1)
    tail.done.set()
    tail.join()
    result["serve_output"] = (proc.stdout.read() if proc.stdout else "")[-3000:]
    result["lines"] = tail.lines
    if ready is not None:
        try:
            result["phases"] = start_timeline(tail.lines, ready)
        except Exception as e:  # noqa: BLE001 - the raw lines are kept either way
            result["phases_error"] = repr(e)
    (args.out / f"timeline-{args.label}.json").write_text(json.dumps(result, indent=1))
    short = {k: v for k, v in result.items() if k not in ("lines", "serve_output", "command")}
    print(json.dumps(short, indent=1))
    if ready is None:
        print(result["serve_output"])


if __name__ == "__main__":
    main()
