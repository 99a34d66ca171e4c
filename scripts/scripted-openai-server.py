"""A scripted OpenAI-compatible server on 127.0.0.1 for scripts/check-install.sh (standard library only).

    python3 scripts/scripted-openai-server.py PORT_FILE [--lifetime SECONDS]

Binds a free loopback port and writes it to PORT_FILE once it listens. ``GET /v1/models`` lists one
model; ``POST /v1/chat/completions`` checks that the request carries the question and 16 kHz mono WAV
``input_audio`` parts (400 naming what is wrong otherwise), then streams REASONING and ANSWER as
vLLM does (``delta.reasoning``, then ``delta.content``, usage, ``[DONE]``). Anything else is 404
(``/tokenize`` too: the client then stops on the text of <|EOT|>). It exits by itself after
``--lifetime`` seconds (default 120), so it cannot outlive the check that started it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

MODEL = "scripted"
REASONING = ["The clip is ", "a steady tone."]
ANSWER = ["A 440 Hz ", "tone."]


def audio_problem(body: dict) -> str | None:
    """What is wrong with a chat request from `stepaudio ask`, or None."""
    if body.get("stream") is not True:
        return "the request is not streamed"
    human = [m for m in body.get("messages", []) if isinstance(m, dict) and isinstance(m.get("content"), list)]
    if not human:
        return "no message with content parts"
    parts = human[0]["content"]
    if not any(p.get("type") == "text" and p.get("text") for p in parts):
        return "no question text"
    audio = [p for p in parts if p.get("type") == "input_audio"]
    if not audio:
        return "no input_audio part"
    for part in audio:
        try:
            with wave.open(io.BytesIO(base64.b64decode(part["input_audio"]["data"]))) as w:
                rate, channels, frames = w.getframerate(), w.getnchannels(), w.getnframes()
        except (KeyError, TypeError, ValueError, EOFError, wave.Error) as e:
            return f"an input_audio part is not a WAV file ({e})"
        if (rate, channels) != (16000, 1) or frames == 0:
            return f"an input_audio part is {rate} Hz, {channels} channel(s), {frames} frames (want 16 kHz mono)"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def reply_json(self, obj: dict, status: int = 200) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            return self.reply_json({"data": [{"id": MODEL, "object": "model", "max_model_len": 4096}]})
        self.reply_json({"error": {"message": f"no route {self.path}"}}, 404)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/chat/completions":
            return self.reply_json({"error": {"message": f"no route {self.path}"}}, 404)
        problem = audio_problem(body)
        if problem:
            return self.reply_json({"error": {"message": f"scripted server: {problem}"}}, 400)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        deltas = [{"reasoning": r} for r in REASONING] + [{"content": c} for c in ANSWER]
        for i, delta in enumerate(deltas):
            choice = {"index": 0, "delta": delta, "finish_reason": "stop" if i == len(deltas) - 1 else None}
            self.wfile.write(b"data: " + json.dumps({"model": MODEL, "choices": [choice]}).encode() + b"\n\n")
        usage = {"prompt_tokens": 60, "completion_tokens": len(deltas), "total_tokens": 60 + len(deltas)}
        self.wfile.write(b"data: " + json.dumps({"model": MODEL, "choices": [], "usage": usage}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port_file", type=Path)
    parser.add_argument("--lifetime", type=float, default=120.0)
    args = parser.parse_args()
    threading.Timer(args.lifetime, os._exit, (3,)).start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
