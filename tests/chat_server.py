"""A scripted chat server on 127.0.0.1 for the conversation and log tests: every request is
answered with one reasoning delta and one answer delta, and the request bodies are kept."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

from conftest import reply_json, reply_stream
from typer.testing import CliRunner

from stepaudio_cli.cli import app

runner = CliRunner()
REASONING, ANSWER = "The tone is steady at 440 Hz.", "A beep."


class Scripted(BaseHTTPRequestHandler):
    """``bodies``: the chat requests it got; ``replies``: (reasoning, answer) pairs used in turn,
    the last one repeating."""

    bodies: list
    replies: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        reply_json(self, {"data": [{"id": "scripted", "max_model_len": 16384}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.path.endswith("/chat/completions"):
            reply_json(self, {"error": {"message": "not here"}}, status=404)
            return
        self.bodies.append(body)
        reasoning, answer = self.replies[min(len(self.bodies), len(self.replies)) - 1]
        usage = {"prompt_tokens": 100 * len(self.bodies), "completion_tokens": 12}
        reply_stream(self, [{"reasoning": reasoning}, {"content": answer}], "stop", usage)


def scripted_server(http_servers, *replies: tuple[str, str]) -> tuple[str, list]:
    """A scripted server (``http_servers`` is conftest's fixture): its URL and the bodies it gets."""
    bodies: list = []
    handler = type("H", (Scripted,), {"bodies": bodies, "replies": list(replies) or [(REASONING, ANSWER)]})
    return http_servers(handler), bodies


def ask(*args: str, env: dict | None = None, input: bytes | None = None):
    return runner.invoke(app, ["ask", *args], env=env, input=input)


def logs(*args: str):
    return runner.invoke(app, ["logs", *args])
