"""A hostile OpenAI-compatible server on loopback: every reply it sends is set by the test.

``HostileServer.behave(models=..., tokenize=..., chat=...)`` sets what the next requests get:
``models`` and ``tokenize`` are the raw bodies of GET /v1/models and POST /tokenize, ``chat`` a
function of the request's audio length in tenths of a second (so each file of a batch can get
its own reply) that returns the raw body of POST /v1/chat/completions, or HANG (never answer)
or KEEPALIVE (an SSE comment every 0.2 s, forever), or DROP (some text, then the connection
closes mid-body, as a server that dies mid-answer leaves it).
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import soundfile as sf

HANG = "hang"
KEEPALIVE = "keepalive"
DROP = "drop"
MODEL = "hostile"
MODELS_OK = json.dumps({"object": "list", "data": [{"id": MODEL, "max_model_len": 16384}]}).encode()
TOKENS_OK = json.dumps({"tokens": [7]}).encode()


def sse(*chunks) -> bytes:
    """A stream of ``data:`` lines: objects as JSON, bytes as they are; then ``[DONE]``."""
    lines = [c if isinstance(c, bytes) else json.dumps(c).encode() for c in chunks]
    return b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"


def chunk(delta=None, *, finish_reason=None, **fields) -> dict:
    """A chat-completions chunk with one choice."""
    choice = {"index": 0, "delta": {} if delta is None else delta, "finish_reason": finish_reason}
    return {"id": "x", "object": "chat.completion.chunk", "model": MODEL, "choices": [choice]} | fields


GOOD_STREAM = sse(
    chunk({"reasoning": "I hear a tone."}),
    chunk({"content": "A beep."}),
    chunk(finish_reason="stop"),
    {
        "id": "x",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 40, "completion_tokens": 2},
    },
)


def _tenths(body: dict) -> int:
    """The request's audio length in tenths of a second (first audio part)."""
    for message in body.get("messages", []):
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "input_audio":
                    info = sf.info(io.BytesIO(base64.b64decode(part["input_audio"]["data"])))
                    return round(10 * info.frames / info.samplerate)
    return 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    owner: HostileServer

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, status: int = 200, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.owner.requests.append(("GET", self.path))
        if self.path.rstrip("/").endswith("/models"):
            self._send(self.owner.models)
        else:
            self._send(b"{}", 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        self.owner.requests.append(("POST", self.path))
        if self.path.endswith("/tokenize"):
            self._send(self.owner.tokenize)
            return
        reply = self.owner.chat(_tenths(body))
        if reply == HANG:
            self.owner.stopped.wait(60)
            self.close_connection = True
            return
        if reply == KEEPALIVE:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            while not self.owner.stopped.wait(0.2):
                try:
                    self.wfile.write(b": still thinking\n\n")
                    self.wfile.flush()
                except OSError:
                    break
            self.close_connection = True
            return
        if reply == DROP:
            part = sse(chunk({"reasoning": "I hear"}))[: -len(b"data: [DONE]\n\n")]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(part) + 1000))
            self.end_headers()
            self.wfile.write(part)
            self.wfile.flush()
            self.close_connection = True
            return
        status, reply = reply if isinstance(reply, tuple) else (200, reply)
        self._send(reply, status, "text/event-stream" if status == 200 else "application/json")


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that hangs up on a reply (too long, too much) is within its rights."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class HostileServer:
    def __init__(self) -> None:
        self.stopped = threading.Event()
        handler = type("H", (_Handler,), {"owner": self})
        self.httpd = _Quiet(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.requests: list[tuple[str, str]] = []
        self.behave()
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def behave(
        self,
        *,
        models: bytes = MODELS_OK,
        tokenize: bytes = TOKENS_OK,
        chat: Callable[[int], bytes | str | tuple[int, bytes]] = lambda tenths: GOOD_STREAM,
    ) -> None:
        self.models, self.tokenize, self.chat = models, tokenize, chat
        self.requests = []

    def chat_posts(self) -> int:
        return sum(1 for method, path in self.requests if method == "POST" and path.endswith("/chat/completions"))

    def close(self) -> None:
        self.stopped.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        time.sleep(0)
