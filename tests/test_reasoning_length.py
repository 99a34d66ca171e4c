"""The remote reasoning-length scheme, request by request, against a small real HTTP server
that answers with scripted streams and records what it was asked (fast: no vLLM)."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import reply_json, reply_stream

from stepaudio_cli.audio import Audio
from stepaudio_cli.engines import EngineSettings, collect, open_engine
from stepaudio_cli.request import Request, Sampling, Thinking

TOKENS = {"<|EOT|>": [7], "</think>": [8, 9]}  # the tag as two tokens, as a checkpoint may have it
AUDIO = (Audio(name="a.wav", samples=np.zeros(16000, dtype=np.float32)),)


class Scripted(BaseHTTPRequestHandler):
    """Each chat request takes the next script: (reasoning pieces, content pieces, finish_reason)."""

    scripts: list = []
    asked: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        reply_json(self, {"data": [{"id": "scripted", "max_model_len": 4096}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            return reply_json(self, {"tokens": TOKENS[body["prompt"]]})
        self.asked.append(body)
        reasoning, content, finish = self.scripts.pop(0)
        chunks = [{"reasoning": r} for r in reasoning] + [{"content": c} for c in content]
        reply_stream(self, chunks, finish, {"prompt_tokens": 50, "completion_tokens": len(chunks)})


@pytest.fixture
def server():
    handler = type("H", (Scripted,), {"scripts": [], "asked": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def run(url: str, thinking: Thinking, max_tokens: int | None = None):
    async def go():
        async with open_engine(EngineSettings(servers=(url,))) as engine:
            return await collect(
                engine, Request(AUDIO, "Q", sampling=Sampling(max_tokens=max_tokens), thinking=thinking)
            )

    return asyncio.run(go())


def assistant(body: dict) -> str:
    return body["messages"][-1]["content"]


def test_budget_caps_reasoning_then_forces_the_tag_and_asks_for_the_answer(server):
    handler, url = server
    handler.scripts += [(["a", " b", " c"], [], "length"), ([], ["Answer."], "stop")]
    result = run(url, Thinking(budget=3), max_tokens=100)
    first, second = handler.asked
    assert first["max_tokens"] == 3 and "logit_bias" not in first and assistant(first) == "<think>\n"
    assert first["stop_token_ids"] == [7]  # <|EOT|> as the server's tokenizer has it
    assert second["max_tokens"] == 97  # what is left of --max-tokens
    assert assistant(second) == "<think>\na b c</think>"  # continues right after the forced tag
    assert (result.reasoning, result.answer) == ("a b c", "Answer.")
    assert result.usage.reasoning_tokens == 3 and result.usage.completion_tokens == 4


def test_min_think_bans_the_first_token_of_the_tag_and_eot_then_lets_it_close(server):
    handler, url = server
    handler.scripts += [(["x"] * 4, [], "length"), ([" y"], ["Final."], "stop")]
    result = run(url, Thinking(min_tokens=4))
    first, second = handler.asked
    assert first["logit_bias"] == {"8": -100, "7": -100} and first["max_tokens"] == 4
    assert "logit_bias" not in second and "max_tokens" not in second  # no cap: the context decides
    assert assistant(second) == "<think>\nxxxx"
    assert (result.reasoning, result.answer) == ("xxxx y", "Final.")
    assert result.usage.reasoning_tokens == 5


def test_a_model_that_answers_within_the_budget_takes_one_request(server):
    handler, url = server
    handler.scripts += [(["short"], ["Yes."], "stop")]
    result = run(url, Thinking(budget=50))
    assert len(handler.asked) == 1 and handler.asked[0]["max_tokens"] == 50
    assert (result.reasoning, result.answer, result.finish_reason) == ("short", "Yes.", "stop")
