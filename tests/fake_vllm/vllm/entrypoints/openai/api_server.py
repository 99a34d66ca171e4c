"""A stand-in for vLLM's OpenAI server, for tests of the processes around it (resident engines,
`serve --keep-alive`): no model, a scripted stream, vLLM's routes and counters that stepaudio reads.

FAKE_VLLM_DELAY: seconds before it listens; FAKE_VLLM_FAIL: a message to fail the start with;
FAKE_VLLM_CHUNK_S: seconds between streamed chunks. A request that bans a token with ``logit_bias``
(-100: what `--min-think` sends a stock server to hold ``</think>`` back) reasons on as vLLM would,
a chunk every 0.05 s, until its ``max_tokens`` (a long stream to cut). Every start appends a line to FAKE_VLLM_STARTS,
every sleep and wake-up a line to FAKE_VLLM_SLEEPS. With VLLM_SERVER_DEV_MODE=1 and
--enable-sleep-mode it has vLLM's /sleep, /wake_up and /is_sleeping, and refuses requests asleep.
"""

import argparse
import json
import os
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

parser = argparse.ArgumentParser()
for flag in ("--port", "--host", "--uds", "--served-model-name", "--max-model-len"):
    parser.add_argument(flag)
parser.add_argument("--enable-sleep-mode", action="store_true")
args, _ = parser.parse_known_args()
SLEEP_ROUTES = args.enable_sleep_mode and os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
if os.environ.get("FAKE_VLLM_STARTS"):
    with open(os.environ["FAKE_VLLM_STARTS"], "a") as f:
        f.write(f"{os.getpid()}\n")
print(f"INFO [cpu_model_runner.py:68] Starting to load model {args.served_model_name}...", flush=True)
time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0")))
print("INFO [default_loader.py:501] Loading weights took 0.01 seconds", flush=True)
if os.environ.get("FAKE_VLLM_FAIL"):
    print(f"ValueError: {os.environ['FAKE_VLLM_FAIL']}", flush=True)
    sys.exit(1)

KEY = os.environ.get("VLLM_API_KEY")
STATE = {"running": 0, "done": 0, "asleep": False}


def note_sleep(what):
    if os.environ.get("FAKE_VLLM_SLEEPS"):
        with open(os.environ["FAKE_VLLM_SLEEPS"], "a") as f:
            f.write(what + "\n")


LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _reply(self, code, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _keyed(self):
        if KEY and self.path != "/health" and self.headers.get("Authorization") != f"Bearer {KEY}":
            self._reply(401, {"error": "Unauthorized"})
            return False
        return True

    def do_GET(self):
        if not self._keyed():
            return
        if self.path == "/health":
            self._reply(200, b"", "text/plain")
        elif self.path == "/v1/models":
            model = {"id": args.served_model_name, "object": "model", "max_model_len": int(args.max_model_len or 4096)}
            self._reply(200, {"object": "list", "data": [model]})
        elif self.path == "/is_sleeping" and SLEEP_ROUTES:
            self._reply(200, {"is_sleeping": STATE["asleep"]})
        elif self.path == "/metrics":
            with LOCK:
                text = (
                    f'vllm:num_requests_running{{model_name="m"}} {STATE["running"]}\n'
                    f'vllm:num_requests_waiting{{model_name="m"}} 0.0\n'
                    f'vllm:request_success_total{{finished_reason="stop"}} {STATE["done"]}\n'
                )
            self._reply(200, text.encode(), "text/plain")
        else:
            self._reply(404, {"error": "not found"})

    def do_POST(self):
        if not self._keyed():
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        if self.path == "/tokenize":
            self._reply(200, {"tokens": [7], "count": 1})
            return
        if SLEEP_ROUTES and self.path.split("?")[0] in ("/sleep", "/wake_up"):
            STATE["asleep"] = self.path.startswith("/sleep")
            note_sleep("sleep" if STATE["asleep"] else "wake")
            self._reply(200, {"status": "sleeping" if STATE["asleep"] else "awake"})
            return
        if STATE["asleep"]:
            self._reply(503, {"error": "asleep: wake it up first"})
            return
        if self.path != "/v1/chat/completions":
            self._reply(404, {"error": "not found"})
            return
        with LOCK:
            STATE["running"] += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for delta, finish, pause in _deltas(body):
                time.sleep(pause)
                choice = {"index": 0, "delta": delta, "finish_reason": finish}
                self._chunk({"model": args.served_model_name, "choices": [choice]})
            usage = {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
            self._chunk({"model": args.served_model_name, "choices": [], "usage": usage})
            self._write(b"data: [DONE]\n\n")
            self._write(b"")
        finally:
            with LOCK:
                STATE["running"] -= 1
                STATE["done"] += 1

    def _chunk(self, obj):
        self._write(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _write(self, data):
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _deltas(body):
    """(delta, finish_reason, seconds before it) of the reply to ``body``."""
    pause = float(os.environ.get("FAKE_VLLM_CHUNK_S", "0"))
    bias = body.get("logit_bias") if isinstance(body, dict) else None
    if isinstance(bias, dict) and any(isinstance(v, (int, float)) and v <= -100 for v in bias.values()):
        n = int(body.get("max_tokens") or 100)
        yield {"reasoning": "I hear a steady tone"}, None, pause
        for i in range(1, n):
            yield {"reasoning": " on"}, "length" if i == n - 1 else None, 0.05
        return
    yield {"reasoning": "I hear a steady tone"}, None, pause
    yield {"content": "A beep."}, "stop", pause


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


server = UnixServer(args.uds, Handler) if args.uds else TcpServer((args.host or "127.0.0.1", int(args.port)), Handler)
server.serve_forever()
