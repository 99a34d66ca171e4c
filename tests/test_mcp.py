"""`stepaudio mcp` through the official SDK's own client over stdio: a real `stepaudio mcp`
process answering from a scripted model server on 127.0.0.1 (fast), then from the tiny
checkpoint's `stepaudio serve` (the session's vllm_server)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from conftest import SCRIPT, free_port, reply_json, reply_stream, tone, write_wav
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from typer.testing import CliRunner

from stepaudio_cli.cli import app
from stepaudio_cli.records import FIELDS

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


class Model(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible server: every chat request gets the same short stream."""

    wav = b""  # GET of any other path: this audio, as a media URL
    bodies: list[dict] = []  # the chat requests (a test gives its subclass its own list)

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/models"):
            return reply_json(self, {"data": [{"id": "scripted", "max_model_len": 4096}]})
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.wav)))
        self.end_headers()
        self.wfile.write(self.wav)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/chat/completions"):
            self.bodies.append(body)
        reply_stream(self, [{"reasoning": "A tone."}, {"content": "A beep."}], "stop", {"prompt_tokens": 30})


def mcp_params(*args: str) -> StdioServerParameters:
    """`stepaudio mcp ARGS` as an MCP host would start it, in this test's private folders."""
    keep = ("XDG_", "STEPAUDIO_", "HF_", "VLLM_", "NO_COLOR", "PATH", "HOME")
    env = {k: v for k, v in os.environ.items() if k.startswith(keep)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return StdioServerParameters(command=sys.executable, args=["-m", "stepaudio_cli", "mcp", *args], env=env)


def session(*args: str, calls):
    """Start `stepaudio mcp ARGS`, run ``calls(client)`` (a coroutine function), return its result."""

    async def main():
        async with Client(mcp_params(*args), read_timeout_seconds=120) as client:
            return await calls(client)

    return asyncio.run(main())


def text(result) -> str:
    return "".join(block.text for block in result.content)


def test_the_ask_tool_answers_with_text_and_the_whole_record(http_servers, clip):
    model = http_servers(type("M", (Model,), {"wav": clip.read_bytes()}))

    async def calls(client):
        tools = {t.name: t for t in (await client.list_tools()).tools}
        answer = await client.call_tool("ask", {"audio": [str(clip)], "question": "What is it?", "max_tokens": 64})
        from_url = await client.call_tool("ask", {"audio": [model + "/episode"], "question": "What is it?"})
        return tools, answer, from_url

    tools, answer, from_url = session("--server", model, calls=calls)
    assert set(tools) == {"ask", "loaded_engines"}
    assert set(tools["ask"].input_schema["properties"]) == {
        "audio",
        "question",
        "conversation",
        "think_budget",
        "max_tokens",
    }
    assert tools["ask"].input_schema["required"] == ["question"]  # audio: optional in a follow-up
    assert not answer.is_error and text(answer) == "A beep."
    record = answer.structured_content
    assert set(FIELDS) <= set(record) and record["file"] == str(clip) and record["reasoning"] == "A tone."
    assert record["params"]["max_tokens"] == 64
    assert not from_url.is_error and from_url.structured_content["file"] == model + "/episode"


def test_failures_are_tool_errors_and_the_server_goes_on(http_servers, clip, tmp_path):
    model = http_servers(Model)
    closed = f"http://127.0.0.1:{free_port()}"

    async def calls(client):
        results = [
            await client.call_tool("ask", {"audio": [str(tmp_path / "nope.wav")], "question": "Q?"}),
            await client.call_tool("ask", {"audio": [str(clip)], "question": "Q?", "conversation": "c1"}),
            await client.call_tool("ask", {"question": "Q?"}),  # no audio outside a conversation
            await client.call_tool("ask", {"audio": [closed + "/a.wav"], "question": "Q?"}),
            await client.call_tool("ask", {"audio": ["-"], "question": "Q?"}),
            await client.call_tool("ask", {"audio": [str(clip)], "question": "Q?"}),  # still answers
        ]
        return results

    *failures, last = session("--server", model, calls=calls)
    assert [f.is_error for f in failures] == [True] * 5
    messages = [text(f) for f in failures]
    assert messages[0] == f"{tmp_path / 'nope.wav'}: no such file"
    assert messages[1].startswith("--conversation c1: no such conversation in ")
    assert messages[2].startswith("give `audio`")
    assert messages[3].startswith(closed + "/a.wav: cannot connect")
    assert "standard input" in messages[4]
    assert all("\n" not in m for m in messages)
    assert not last.is_error and text(last) == "A beep."


def test_a_conversation_id_continues_that_conversation_without_new_audio(http_servers, clip):
    bodies = []
    model = http_servers(type("M", (Model,), {"bodies": bodies}))

    async def calls(client):
        first = await client.call_tool("ask", {"audio": [str(clip)], "question": "What is it?"})
        cid = first.structured_content["conversation"]
        return first, await client.call_tool("ask", {"question": "Does it change?", "conversation": cid})

    first, second = session("--server", model, calls=calls)
    assert not first.is_error and not second.is_error, text(second)
    one, two = first.structured_content, second.structured_content
    assert one["turn"] == 1 and one["conversation"]
    assert (two["conversation"], two["turn"]) == (one["conversation"], 2) and two["file"] == []
    asked, followed = (b["messages"] for b in bodies)
    assert [m["role"] for m in followed] == ["human", "assistant", "human", "assistant"]
    assert followed[0] == asked[0]  # the first question, with its audio
    assert followed[1] == {"role": "assistant", "content": "<think>\nA tone.</think>A beep."}
    assert followed[2]["content"] == [{"type": "text", "text": "Does it change?"}]
    logged = json.loads(runner.invoke(app, ["logs", "--json"]).stdout)  # the server's log, this test's XDG
    assert [(r["conversation"], r["turn"], r["command"]) for r in logged] == [
        (one["conversation"], 1, "ask"),
        (one["conversation"], 2, "ask"),
    ]


def test_no_log_logs_nothing_and_then_a_conversation_cannot_be_continued(http_servers, clip, monkeypatch):
    model = http_servers(Model)
    monkeypatch.setenv("STEPAUDIO_LOG", "0")  # as a user who turned the log off in their environment

    async def calls(client):
        first = await client.call_tool("ask", {"audio": [str(clip)], "question": "What is it?"})
        cid = first.structured_content["conversation"]
        return first, await client.call_tool("ask", {"question": "And then?", "conversation": cid})

    first, second = session("--server", model, calls=calls)
    assert not first.is_error and second.is_error
    assert "the log" in text(second) and "off" in text(second)
    assert json.loads(runner.invoke(app, ["logs", "--json"]).stdout) == []


def test_a_long_recording_reports_its_windows_as_progress(http_servers, tmp_path):
    model = http_servers(Model)
    long = write_wav(tmp_path / "long.wav", tone(70.0))
    seen = []

    async def progress(done, total, message):
        seen.append((done, total, message))

    async def calls(client):
        return await client.call_tool("ask", {"audio": [str(long)], "question": "Q?"}, progress_callback=progress)

    result = session("--server", model, "--window", "30s", calls=calls)
    assert not result.is_error, text(result)
    windows = result.structured_content["windows"]
    assert len(windows) >= 3
    assert seen[0][:2] == (0, len(windows) + 1) and seen[-1][0] == len(windows)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)
    assert seen[-1][2] == f"combining the answers of {len(windows)} windows"


def test_loaded_engines_lists_none(own_registry):
    async def calls(client):
        return await client.call_tool("loaded_engines", {})

    result = session("--server", "http://127.0.0.1:9", calls=calls)
    assert not result.is_error and result.structured_content == {"engines": []}
    assert text(result).startswith("No model is loaded")


def test_without_the_sdk_one_line_says_what_to_install():
    code = "import sys; sys.modules['mcp'] = None; from stepaudio_cli.cli import main; main()"
    params = mcp_params()
    out = subprocess.run(
        [sys.executable, "-c", code, "mcp", "--server", "http://127.0.0.1:9"],
        env={**os.environ, **params.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "error: the MCP server needs the official MCP SDK: pip install 'stepaudio[mcp]'"


def test_in_process_engines_are_refused(monkeypatch):
    result = runner.invoke(app, ["mcp", "--keep-alive", "0"])
    assert result.exit_code == 2 and "--keep-alive above 0" in result.stderr


@pytest.mark.engine
def test_the_tiny_model_answers_through_mcp(vllm_server, clip, monkeypatch):
    async def calls(client):
        return await client.call_tool("ask", {"audio": [str(clip)], "question": "What is it?"})

    monkeypatch.setenv("STEPAUDIO_API_KEY", "sekret")  # the key from the environment, as hosts pass it
    result = session("--server", vllm_server.url, calls=calls)
    reasoning, answer = SCRIPT
    assert not result.is_error, text(result)
    assert text(result) == answer and result.structured_content["reasoning"] == reasoning


def test_help_imports_neither_the_sdk_nor_yt_dlp():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from stepaudio_cli.cli import app\n"
        "assert CliRunner().invoke(app, ['mcp', '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('mcp', 'mcp_types', 'yt_dlp', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
