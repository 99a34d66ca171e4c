"""Follow-up questions: `ask -c` / `--conversation ID` send the earlier turns again, as R1's
template renders a conversation, so the prompt starts with the previous turn's prompt and reply.
Against a scripted server on 127.0.0.1; the template and prompt agreement without a server."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest
from chat_server import ask, logs, scripted_server
from conftest import tone, write_wav

from stepaudio_cli.audio import Audio
from stepaudio_cli.engines.settings import EngineSettings, command_line_flags, vllm_args
from stepaudio_cli.prompt import NO_THINK_PREFIX, build_messages, build_prompt
from stepaudio_cli.request import Request, Sampling, Turn, max_tokens_to_send
from stepaudio_cli.splitter import ReasoningSplitter

TEMPLATE = Path(__file__).parent.parent / "stepaudio_cli" / "vllm_plugin" / "chat_template.jinja"


@pytest.fixture
def scripted(http_servers):
    return lambda *replies: scripted_server(http_servers, *replies)


def audio_parts(message: dict) -> list[str]:
    return [p["input_audio"]["data"] for p in message["content"] if p["type"] == "input_audio"]


def text_of(message: dict) -> str:
    return "".join(p["text"] for p in message["content"] if p["type"] == "text")


def test_a_follow_up_carries_the_audio_the_question_and_the_first_answer(scripted, clip):
    url, bodies = scripted(("It hums.", "A beep."), ("Only one tone.", "No, it never changes."))
    first = ask("--server", url, "--json", str(clip), "What is it?")
    assert first.exit_code == 0, first.output
    one = json.loads(first.stdout)
    assert one["turn"] == 1 and one["conversation"]

    second = ask("--server", url, "--json", "-c", "Does it change?")
    assert second.exit_code == 0, second.output
    two = json.loads(second.stdout)
    assert (two["conversation"], two["turn"]) == (one["conversation"], 2)
    assert two["answer"] == "No, it never changes." and two["file"] == [] and two["prompt"] == "Does it change?"

    asked, followed = (b["messages"] for b in bodies)
    assert [m["role"] for m in followed] == ["human", "assistant", "human", "assistant"]
    assert followed[0] == asked[0]  # the first question with the very same audio
    assert len(audio_parts(followed[0])) == 1
    # The first reply as generated (prefix, reasoning, tag, answer), then the new question, no audio.
    assert followed[1] == {"role": "assistant", "content": "<think>\nIt hums.</think>A beep."}
    assert followed[2]["content"] == [{"type": "text", "text": "Does it change?"}]
    assert followed[3] == {"role": "assistant", "content": "<think>\n"}
    assert bodies[1]["continue_final_message"] is True

    listed = json.loads(logs("--json").stdout)
    assert [(r["conversation"], r["turn"], r["question"]) for r in listed] == [
        (one["conversation"], 1, "What is it?"),
        (one["conversation"], 2, "Does it change?"),
    ]
    assert listed[1]["audio"] == []


def test_conversation_id_continues_that_one_and_a_follow_up_may_add_audio(scripted, clip, tmp_path):
    url, bodies = scripted()
    other = write_wav(tmp_path / "other.wav", tone(3.0, freq=880.0))
    first = json.loads(ask("--server", url, "--json", "--system", "Be brief.", str(clip), "Q1").stdout)
    ask("--server", url, str(other), "An unrelated question")  # now the latest conversation
    result = ask("--server", url, "--json", "--conversation", first["conversation"], str(other), "Q2 with more audio")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["turn"] == 2
    messages = bodies[-1]["messages"]
    assert [m["role"] for m in messages] == ["system", "human", "assistant", "human", "assistant"]
    assert messages[0]["content"] == "Be brief."  # the conversation's system prompt stays
    assert text_of(messages[1]) == "Q1" and text_of(messages[3]) == "Q2 with more audio"
    assert audio_parts(messages[1]) == audio_parts(bodies[0]["messages"][1])
    assert audio_parts(messages[3]) == audio_parts(bodies[1]["messages"][0])  # other.wav, added now

    third = json.loads(ask("--server", url, "--json", "-c", "Q3").stdout)  # -c: the one just continued
    assert (third["conversation"], third["turn"]) == (first["conversation"], 3)
    assert [m["role"] for m in bodies[-1]["messages"]].count("human") == 3


def test_a_follow_up_without_the_log_or_anything_logged_is_one_line(scripted, clip):
    url, _ = scripted()
    for args, needle in (
        (["-c", "Q?"], "no conversation in"),
        (["--conversation", "0123456789ab", "Q?"], "no such conversation"),
        (["--no-log", "-c", "Q?"], "the log, and it is off"),
    ):
        result = ask("--server", url, *args)
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and needle in line


def test_a_follow_up_refuses_audio_that_changed_or_came_from_stdin(scripted, tmp_path):
    url, bodies = scripted()
    path = write_wav(tmp_path / "call.wav", tone(2.0))
    assert ask("--server", url, str(path), "Q1").exit_code == 0
    write_wav(path, tone(2.0, freq=300.0))
    result = ask("--server", url, "-c", "Q2")
    assert result.exit_code == 2 and "changed since turn 1 of conversation" in result.stderr
    path.unlink()
    assert "no longer there" in ask("--server", url, "-c", "Q2").stderr

    piped = ask("--server", url, "-", "Q1", input=write_wav(path, tone(1.0)).read_bytes())
    assert piped.exit_code == 0, piped.output
    result = ask("--server", url, "-c", "Q2")
    assert result.exit_code == 2 and "standard input, which is not kept" in result.stderr
    assert len(bodies) == 2  # no refused follow-up reached the server


def test_a_follow_up_to_a_recording_answered_in_windows_sends_the_combined_notes(scripted, tmp_path):
    url, bodies = scripted()
    long = write_wav(tmp_path / "long.wav", tone(25.0))
    first = ask("--server", url, "--json", "--window", "10s", str(long), "What happens?")
    assert first.exit_code == 0, first.output
    combining = bodies[-1]["messages"]
    assert len(bodies) >= 3 and audio_parts(combining[0]) == []  # windows, then one text-only request
    assert ask("--server", url, "-c", "And then?").exit_code == 0
    follow = bodies[-1]["messages"]
    assert [m["role"] for m in follow] == ["human", "assistant", "human", "assistant"]
    assert follow[0] == combining[0]  # each window's answer, labelled, as the combining request had it
    assert all(audio_parts(m) == [] for m in follow if m["role"] == "human")
    assert text_of(follow[2]) == "And then?"


def _render_template(messages: list[dict]) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(TEMPLATE.read_text()).render(messages=messages, add_generation_prompt=False)


def _audio(seconds: float, freq: float = 440.0) -> Audio:
    return Audio(name="a.wav", samples=tone(seconds, freq=freq))


HISTORY = (
    Turn("What is it?", (_audio(30),), "<think>\nIt hums.\n</think>\n\nA beep.", reply_tokens=9),
    Turn("And this one?", (_audio(3, 880.0),), NO_THINK_PREFIX + "A higher beep.", reply_tokens=5),
)


def test_the_server_template_renders_a_conversation_as_build_prompt_writes_it():
    messages = build_messages("Did it change?", [], "Be brief.", history=HISTORY)
    assert _render_template(messages) == build_prompt("Did it change?", [], "Be brief.", history=HISTORY)


def test_a_follow_up_prompt_starts_with_the_previous_prompt_and_its_reply():
    first = build_prompt("What is it?", [_audio(30)], "Be brief.")
    follow = build_prompt("Did it change?", [], "Be brief.", history=HISTORY[:1])
    generated = "It hums.\n</think>\n\nA beep."  # what the model wrote after "<think>\n", then <|EOT|>
    assert follow.startswith(first + generated + "<|EOT|>")


@pytest.mark.parametrize(
    "pieces",
    [
        ["I hear", " a tone.\n</th", "ink>\n\n", "A beep."],  # one stream: the tag in the text
        [("reasoning", "I hear a tone.\n"), ("content", "\n\nA beep.")],  # a server that splits
    ],
)
def test_the_reply_sent_back_is_the_text_as_generated(pieces):
    splitter = ReasoningSplitter()
    for piece in pieces:
        if isinstance(piece, str):
            splitter.feed(piece)
        elif piece[0] == "reasoning":
            splitter.feed_reasoning(piece[1])
        else:
            splitter.feed_answer(piece[1])
    assert splitter.raw == "I hear a tone.\n</think>\n\nA beep."
    assert (splitter.reasoning, splitter.answer) == ("I hear a tone.", "A beep.")


def test_a_follow_up_counts_the_earlier_turns_against_the_context():
    request = Request(audios=(), question="Q", sampling=Sampling(max_tokens=100_000), history=HISTORY)
    room = max_tokens_to_send(request, 16384)
    audio_tokens = sum(a.prompt_tokens for t in HISTORY for a in t.audios)
    assert room == 16384 - audio_tokens - 64 - sum(t.text_tokens for t in HISTORY)
    from stepaudio_cli.errors import AudioError

    with pytest.raises(AudioError, match="this conversation no longer fits max model length 2048"):
        max_tokens_to_send(request, 2048)


def test_prefix_caching_is_on_in_process_and_on_the_server_command_line():
    args = vllm_args(EngineSettings(), Path("/m"), n_gpus=1)
    assert args["enable_prefix_caching"] is True
    assert "--enable-prefix-caching" in command_line_flags(args)


def test_logs_filter_by_conversation_lists_its_turns_in_order(scripted, clip):
    url, _ = scripted()
    first = json.loads(ask("--server", url, "--json", str(clip), "Q1").stdout)
    ask("--server", url, "-c", "Q2")
    ask("--server", url, str(clip), "elsewhere")
    mine = json.loads(logs("--json", "--conversation", first["conversation"]).stdout)
    assert [(r["turn"], r["question"]) for r in mine] == [(1, "Q1"), (2, "Q2")]


def _prefix_cache(url: str) -> tuple[float, int]:
    """The server's prefix cache hits so far (tokens) and its block size."""
    import re

    import httpx

    # The session server has a key, which guards every route but /health.
    text = httpx.get(url + "/metrics", headers={"Authorization": "Bearer sekret"}, timeout=10).text
    hits = [float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines() if ln.startswith("vllm:prefix_cache_hits_total")]
    block = re.search(r'vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', text)
    assert hits and block, "the server reports no prefix cache counters"
    return sum(hits), int(block.group(1))


def test_a_follow_up_on_the_real_server_is_served_from_the_prefix_cache(vllm_server, tmp_path):
    """`stepaudio serve` (the real template, the plugin, the tiny scripted checkpoint): the
    follow-up's prompt starts with the whole first turn, and vLLM serves it from its cache."""
    from conftest import SCRIPT

    reasoning, answer = SCRIPT
    long = write_wav(tmp_path / "clip.wav", tone(20.0))  # over one KV block (128 tokens on CPU)
    key = ("--server", vllm_server.url, "--api-key", "sekret", "--json")
    first = ask(*key, str(long), "What is happening?")
    assert first.exit_code == 0, first.output
    one = json.loads(first.stdout)
    before, block = _prefix_cache(vllm_server.url)
    second = ask(*key, "-c", "Are you sure?")
    assert second.exit_code == 0, second.output
    two = json.loads(second.stdout)
    assert (two["conversation"], two["turn"], two["answer"]) == (one["conversation"], 2, answer)
    # Every full block of the first turn (its prompt with the audio, and its reply) came from the cache.
    first_turn = one["usage"]["prompt_tokens"] + one["usage"]["completion_tokens"]
    hits = _prefix_cache(vllm_server.url)[0] - before
    assert hits >= (first_turn - 1) // block * block > 0
    assert two["usage"]["prompt_tokens"] > first_turn
    assert reasoning in json.loads(logs("--json").stdout)[-1]["reply"]
