"""`stepaudio ask` end to end against real servers on 127.0.0.1.

The main server is `stepaudio serve` (vLLM's OpenAI server on CPU, this project's plugin,
the scripted tiny checkpoint). Failure modes a healthy vLLM never shows (5xx, a stream that
dies midway) come from a small real HTTP server that replays a vLLM-shaped stream.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import SCRIPT, reply_json, tone, write_wav
from typer.testing import CliRunner

from stepaudio_cli.cli import app
from stepaudio_cli.records import FIELDS

runner = CliRunner()
REASONING, ANSWER = SCRIPT


def ask(*args: str, input: bytes | None = None):
    return runner.invoke(app, ["ask", *args], input=input)


def assert_one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.stderr


def test_help_is_instant_and_imports_no_torch_or_vllm():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from stepaudio_cli.cli import app\n"
        "for cmd in ([], ['ask'], ['serve'], ['--help']):\n"
        "    r = CliRunner().invoke(app, [*cmd, '--help'])\n"
        "    assert r.exit_code == 0, r.output\n"
        "heavy = sorted(m for m in ('torch', 'vllm', 'transformers', 'numpy', 'httpx') if m in sys.modules)\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_remote_ask_streams_reasoning_to_stderr_and_answer_to_stdout(vllm_server, clip):
    result = ask("--server", vllm_server.url, "--api-key", "sekret", str(clip), "What is happening?")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert REASONING in result.stderr
    assert "tokens" in result.stderr and "first token" in result.stderr  # the stats line


def script_tokens(ckpt, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(str(ckpt / "tokenizer.json")).encode(text).ids)


def test_remote_ask_json(vllm_server, scripted_ckpt, clip, tmp_path):
    other = write_wav(tmp_path / "other.wav", tone(31.0, freq=880))  # two chunks
    result = ask("--server", vllm_server.url, "--api-key", "sekret", "--json", str(clip), str(other), "Compare them.")
    assert result.exit_code == 0, result.stderr
    obj = json.loads(result.stdout)  # exactly one JSON document
    assert list(obj) == [*FIELDS, "conversation", "turn"]  # the record batch writes, and its conversation
    assert (obj["reasoning"], obj["answer"], obj["prompt"], obj["error"]) == (REASONING, ANSWER, "Compare them.", None)
    assert obj["file"] == [str(clip), str(other)]
    assert obj["audio_seconds"] == pytest.approx(34.0)
    assert obj["finish_reason"] == "stop" and obj["params"]["temperature"] == 0.7
    # 3 chunks: 3 s, 25 s, 6 s -> (38 + 313 + 75) patches + 2 markers each, plus the text.
    assert obj["usage"]["prompt_tokens"] > 38 + 313 + 75 + 6
    n_reasoning = script_tokens(scripted_ckpt, REASONING)
    # reasoning, </think>, answer, <|EOT|>
    assert obj["usage"]["completion_tokens"] == n_reasoning + 1 + script_tokens(scripted_ckpt, ANSWER) + 1
    assert obj["usage"]["reasoning_tokens"] == n_reasoning
    assert obj["timings"]["time_to_first_token"] > 0
    assert result.stderr == ""  # nothing but the JSON when --json


def test_remote_ask_from_stdin_with_hidden_reasoning(vllm_server, clip):
    result = ask(
        "--server", vllm_server.url, "--api-key", "sekret", "--hide-reasoning", "-", "Q?", input=clip.read_bytes()
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ANSWER + "\n"
    assert REASONING not in result.stderr


def test_wrong_api_key_is_one_line(vllm_server, clip):
    result = ask("--server", vllm_server.url, str(clip), "Q?")
    assert_one_line_error(result, 1, "401", "--api-key")


def test_audio_too_long_for_the_server_is_refused(vllm_server, tmp_path):
    long = write_wav(tmp_path / "long.wav", tone(300.0))
    result = ask("--server", vllm_server.url, "--api-key", "sekret", str(long), "Q?", "--no-window")
    assert_one_line_error(result, 2, "long.wav", "max model length 4096")


def test_bad_audio_fails_before_connecting(tmp_path):
    bad = tmp_path / "notes.wav"
    bad.write_text("hello")
    result = ask("--server", "http://127.0.0.1:9", str(bad), "Q?")
    assert_one_line_error(result, 2, str(bad))


def test_missing_question(clip):
    result = ask(str(clip))
    assert_one_line_error(result, 2, "question")


def test_connection_refused(clip):
    from conftest import free_port

    result = ask("--server", f"http://127.0.0.1:{free_port()}", str(clip), "Q?")
    assert_one_line_error(result, 1, "cannot connect", "connection refused")


# --- a replaying server for failures ---------------------------------------------------------


def _chunk(**delta) -> bytes:
    body = {"id": "x", "object": "chat.completion.chunk", "model": "replay", "choices": [{"index": 0, "delta": delta}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Replay(BaseHTTPRequestHandler):
    mode = "drop"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        reply_json(self, {"data": [{"id": "replay", "max_model_len": 16384}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "hang":  # lists its model, then never answers a request
            time.sleep(3600)
            return
        if self.mode == "500":
            reply_json(self, {"error": {"message": "CUDA out of memory. Tried to allocate 2 GiB"}}, status=500)
            return
        chunks = [_chunk(reasoning="Let me listen"), _chunk(reasoning=" closely."), _chunk(content="It is")]
        payload = b"".join(chunks)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(payload) + 1000))  # promise more than we send
        self.end_headers()
        self.wfile.write(payload)
        self.wfile.flush()
        self.close_connection = True  # then the connection dies mid-stream


@pytest.fixture
def replay_server(http_servers):
    return lambda mode: http_servers(type("H", (Replay,), {"mode": mode}))


def test_stream_dying_midway_keeps_what_was_shown(replay_server, clip):
    result = ask("--server", replay_server("drop"), str(clip), "Q?")
    assert_one_line_error(result, 1, "dropped mid-stream")
    assert "Let me listen closely." in result.stderr
    assert result.stdout.startswith("It is")


def test_server_error_message_is_shown(replay_server, clip):
    result = ask("--server", replay_server("500"), str(clip), "Q?")
    assert_one_line_error(result, 1, "500", "CUDA out of memory")


def test_no_color_on_a_terminal_is_plain_text(monkeypatch):
    """A terminal that asks for NO_COLOR gets no escape codes, not even dim reasoning."""
    import io

    from stepaudio_cli.terminal import Terminal

    class Tty(io.StringIO):
        def isatty(self):
            return True

    def render(no_color: str) -> str:
        monkeypatch.setenv("NO_COLOR", no_color)
        monkeypatch.setenv("TERM", "xterm-256color")
        err = Tty()
        term = Terminal(stdout=Tty(), stderr=err)
        term.stream_reasoning("thinking")
        term.error("bad.wav: no such file")
        return err.getvalue()

    assert "\x1b[2m" in render("")  # dim reasoning on a colour terminal
    assert render("1") == "thinking\nerror: bad.wav: no such file\n"  # the error on a line of its own


class Answers(BaseHTTPRequestHandler):
    """A server that answers every request whole (its context: 16384)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        reply_json(self, {"data": [{"id": "scripted", "max_model_len": 16384}]})

    def do_POST(self):
        from conftest import reply_stream

        self.rfile.read(int(self.headers["Content-Length"]))
        reply_stream(self, [{"reasoning": "Hm."}, {"content": "A tone."}], "stop", {"completion_tokens": 3})


@pytest.fixture
def planned(monkeypatch):
    """Counts the window plans `ask` makes (each is the context-fit check)."""
    from stepaudio_cli import windows

    calls = []
    real = windows.plan

    def counted(request, max_model_len, windowing):
        calls.append(max_model_len)
        return real(request, max_model_len, windowing)

    monkeypatch.setattr(windows, "plan", counted)
    return calls


def test_ask_plans_once_for_the_engine_it_starts(http_servers, monkeypatch, planned, clip, tmp_path):
    """The resident engine (here a scripted server in its place): planned once, for the settings
    it starts with, before it loads, and not again once connected."""
    import contextlib
    import dataclasses

    from stepaudio_cli import resident

    url = http_servers(Answers)
    held = []

    @contextlib.contextmanager
    def session(settings, keep_alive, on_status, **_):
        held.append((settings.max_model_len, keep_alive, list(planned)))
        yield dataclasses.replace(settings, servers=(url,))

    monkeypatch.setattr(resident, "session", session)
    model = tmp_path / "model"
    model.mkdir()
    result = ask("-m", str(model), "--keep-alive", "5m", "--max-model-len", "8192", str(clip), "Q?")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "A tone.\n"
    assert held == [(8192, 300.0, [8192])]  # planned before the engine was asked for
    assert planned == [8192]


def test_ask_on_a_server_plans_once_connected(http_servers, planned, clip):
    result = ask("--server", http_servers(Answers), str(clip), "Q?")
    assert result.exit_code == 0, result.stderr
    assert planned == [16384]  # the server's context, read once connected
