"""`stepaudio chat` driven through a pseudo-terminal, as a person types, against a scripted server
on 127.0.0.1: streamed answers, dim reasoning, /reasoning, /audio, /save, readline history, Ctrl-C
stopping an answer but not the chat, and Ctrl-D ending it with exit 0."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
from chat_server import Scripted, logs
from conftest import reply_json, reply_stream, tone, write_wav

ROOT = Path(__file__).resolve().parent.parent
REPLIES = [("Thinking about one.", "Answer one."), ("Thinking about two.", "Answer two."), ("More.", "Answer three.")]


class Stalling(Scripted):
    """Answers in turn from REPLIES; a question with "slowly" in it streams some reasoning, then
    nothing more until the client hangs up."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not self.path.endswith("/chat/completions"):  # /tokenize: not a vLLM server
            reply_json(self, {"error": {"message": "not here"}}, status=404)
            return
        question = body["messages"][-2]["content"][0]["text"]
        if "slowly" in question:
            self.stalled.append(question)
            reply_stream_start(self)
            return
        self.bodies.append(body)
        reasoning, answer = self.replies[min(len(self.bodies), len(self.replies)) - 1]
        reply_stream(self, [{"reasoning": reasoning}, {"content": answer}], "stop", {"completion_tokens": 5})


def reply_stream_start(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.end_headers()
    chunk = {"model": "scripted", "choices": [{"index": 0, "delta": {"reasoning": "Listening slowly"}}]}
    handler.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    handler.wfile.flush()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:  # until the client goes away
            time.sleep(0.05)
            handler.wfile.write(b": still here\n\n")
            handler.wfile.flush()
    except OSError:
        handler.stopped.append(True)


class Pty:
    """A command in a pseudo-terminal (its controlling terminal: Ctrl-C is a real SIGINT)."""

    def __init__(self, argv: list[str], env: dict) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child
            os.execve(sys.executable, [sys.executable, *argv], env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.seen = ""

    def expect(self, text: str, timeout: float = 60) -> str:
        """Everything up to and including the first ``text`` not read yet."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; got:\n{self.seen}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    self.seen += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child is gone
                    assert text in self.seen, f"exited before {text!r}; got:\n{self.seen}"
        before, _, self.seen = self.seen.partition(text)
        return before + text

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self) -> int:
        with_output = ""
        while True:  # drain, so the child never blocks on a full terminal
            try:
                chunk = os.read(self.fd, 65536) if select.select([self.fd], [], [], 30)[0] else b""
            except OSError:
                break
            if not chunk:
                break
            with_output += chunk.decode(errors="replace")
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status)


@pytest.fixture
def server(http_servers):
    bodies, stalled, stopped = [], [], []
    handler = type("H", (Stalling,), {"bodies": bodies, "replies": REPLIES, "stalled": stalled, "stopped": stopped})
    return http_servers(handler), bodies, stalled, stopped


def test_a_chat_session_through_a_pseudo_terminal(server, tmp_path):
    url, bodies, stalled, stopped = server
    clip = write_wav(tmp_path / "call.wav", tone(2.0))
    more = write_wav(tmp_path / "more.wav", tone(3.0, freq=880.0))
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(TERM="xterm-256color", PYTHONPATH=str(ROOT), COLUMNS="200")
    chat = Pty(["-m", "stepaudio_cli", "chat", "--server", url, str(clip)], env)

    chat.expect(">>> ")
    chat.send("What is it?\r")
    shown = chat.expect(">>> ")
    assert "\x1b[2mThinking about one." in shown  # reasoning, dim
    assert "Answer one." in shown and "first token" in shown

    chat.send("/reasoning off\r")
    chat.expect(">>> ")
    chat.send(f"/audio {more}\r")
    assert "goes with your next question" in chat.expect(">>> ")
    chat.send("And this one?\r")
    shown = chat.expect(">>> ")
    assert "Answer two." in shown and "Thinking about two." not in shown

    chat.send("/reasoning on\r")
    chat.expect(">>> ")
    chat.send("Think slowly about it\r")
    chat.expect("Listening slowly")
    chat.send("\x03")  # Ctrl-C: stops this answer
    assert "(stopped)" in chat.expect(">>> ")

    chat.send("\x12And\r")  # readline: Ctrl-R finds "And this one?" in the history, Enter asks it again
    assert "Answer three." in chat.expect(">>> ")
    saved = tmp_path / "chat.json"
    chat.send(f"/save {saved}\r")
    assert "saved 3 turns" in chat.expect(">>> ")
    chat.send("/nonsense\r")
    assert "unknown command /nonsense (/help lists them)" in chat.expect(">>> ")
    chat.send("\x04")  # Ctrl-D: the end
    assert chat.wait() == 0

    assert stalled == ["Think slowly about it"]
    deadline = time.monotonic() + 30
    while not stopped and time.monotonic() < deadline:  # the server sees the hang-up on its next write
        time.sleep(0.05)
    assert stopped  # the stopped request was hung up on, not left running
    # Each question carries the turns before it (not the stopped one), the audio where it was added.
    humans = [[m for m in b["messages"] if m["role"] == "human"] for b in bodies]
    texts = [[m["content"][0]["text"] for m in h] for h in humans]
    first, second = "What is it?", "And this one?"
    assert texts == [[first], [first, second], [first, second, second]]
    audio_counts = [[sum(p["type"] == "input_audio" for p in m["content"]) for m in h] for h in humans]
    assert audio_counts[-1] == [1, 1, 0]
    saved_turns = json.loads(saved.read_text())
    assert [t["turn"] for t in saved_turns["turns"]] == [1, 2, 3]
    logged = json.loads(logs("--json").stdout)
    assert [(r["command"], r["turn"], r["answer"]) for r in logged] == [
        ("chat", 1, "Answer one."),
        ("chat", 2, "Answer two."),
        ("chat", 3, "Answer three."),
    ]
    assert {r["conversation"] for r in logged} == {saved_turns["conversation"]}


def test_chat_reads_piped_questions_goes_on_with_a_conversation_and_never_saves_over_a_file(server, tmp_path):
    from typer.testing import CliRunner

    from stepaudio_cli.cli import app

    url, bodies, _, _ = server
    clip = write_wav(tmp_path / "call.wav", tone(2.0))
    other = tmp_path / "notes.json"
    other.write_text("mine")
    first = CliRunner().invoke(app, ["chat", "--server", url, str(clip)], input=f"What is it?\n/save {other}\n")
    assert first.exit_code == 0, first.output
    assert first.stdout == "Answer one.\n"  # piped: no prompt, the answers alone
    assert "already exists" in first.stderr and other.read_text() == "mine"

    again = CliRunner().invoke(app, ["chat", "-c", "--server", url], input="And then?\n/bad\n/exit\nnot asked\n")
    assert again.exit_code == 0, again.output
    assert again.stdout == "Answer two.\n" and "error: unknown command /bad" in again.stderr
    texts = [m["content"][0]["text"] for m in bodies[-1]["messages"] if m["role"] == "human"]
    assert texts == ["What is it?", "And then?"] and len(bodies) == 2
    assert [r["turn"] for r in json.loads(logs("--json").stdout)] == [1, 2]
