"""Prompt format, request limits and the streaming reasoning/answer split."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from conftest import tone
from hypothesis import given, settings
from hypothesis import strategies as st

from stepaudio_cli.audio import Audio
from stepaudio_cli.errors import AudioError
from stepaudio_cli.prompt import build_messages, build_prompt
from stepaudio_cli.request import Sampling, generation_room
from stepaudio_cli.splitter import ReasoningSplitter


def audio(seconds: float, name: str = "a.wav") -> Audio:
    return Audio(name=name, samples=tone(seconds))


def test_prompt_matches_the_model_format():
    assert build_prompt("What is this?", [audio(3)], system="Be brief.") == (
        "<|BOT|>system\nBe brief.<|EOT|><|BOT|>human\nWhat is this?\n<audio_patch><|EOT|><|BOT|>assistant\n<think>\n"
    )


def test_prompt_has_one_placeholder_per_25s_chunk_and_no_system_turn_by_default():
    prompt = build_prompt("Q", [audio(60), audio(10)])
    assert prompt.count("<audio_patch>") == 3 + 1
    assert not prompt.startswith("<|BOT|>system")


def test_messages_carry_16k_wav_chunks_and_continue_the_think_turn():
    messages = build_messages("Q", [audio(30)], system="S")
    assert [m["role"] for m in messages] == ["system", "human", "assistant"]
    assert messages[-1]["content"] == "<think>\n"
    parts = messages[1]["content"]
    assert parts[0] == {"type": "text", "text": "Q"}
    assert [p["type"] for p in parts[1:]] == ["input_audio", "input_audio"]
    decoded = [sf.read(io.BytesIO(base64.b64decode(p["input_audio"]["data"]))) for p in parts[1:]]
    assert [sr for _, sr in decoded] == [16000, 16000]
    assert [len(x) for x, _ in decoded] == [25 * 16000, 5 * 16000]


def test_defaults_leave_all_the_context_to_reasoning_and_answer():
    s = Sampling()
    assert (s.temperature, s.top_p) == (0.7, 0.9)
    ten_seconds = audio(10).prompt_tokens
    assert generation_room([audio(10)], s, 65536) == 65536 - ten_seconds - 64  # 64: question + scaffolding
    assert generation_room([audio(10)], s, None) is None  # the server decides


def test_fit_max_tokens_shrinks_to_the_context_then_refuses():
    assert generation_room([audio(10)], Sampling(max_tokens=8192), 16384) == 8192
    assert 3072 < generation_room([audio(700)], Sampling(max_tokens=8192), 16384) < 8192
    with pytest.raises(AudioError) as err:
        generation_room([audio(1200, "long.wav")], Sampling(), 16384)
    assert err.value.message.startswith("long.wav: 20m00s of audio needs")
    assert "--max-model-len" in err.value.message


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("I think.\n</think>\n\nIt is a dog.", "I think.", "It is a dog."),
        ("a</think>b</think>c", "a", "b</think>c"),  # split on the FIRST tag only
        ("no tag at all", "no tag at all", ""),
        ("</think>direct", "", "direct"),
        ("x </thin", "x </thin", ""),  # a partial tag at the end is reasoning after all
        ("ends with tag</think>", "ends with tag", ""),
    ],
)
def test_split(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


def split_reasoning(text: str) -> tuple[str, str]:
    """A complete output through the streaming splitter in one piece."""
    splitter = ReasoningSplitter()
    splitter.feed(text)
    splitter.finish()
    return splitter.reasoning, splitter.answer


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab<>/thinkc \n", max_size=40),
    st.text(alphabet="ab<>/thinkc \n", max_size=40),
    st.lists(st.integers(min_value=0, max_value=100), max_size=8),
)
def test_split_is_the_same_however_the_stream_is_cut(before, after, cuts):
    text = before + "</think>" + after
    expected = split_reasoning(text)
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[i:j] for i, j in zip([0, *points], [*points, len(text)])]
    splitter = ReasoningSplitter()
    events = []
    for piece in pieces:
        events += splitter.feed(piece)
    events += splitter.finish()
    assert (splitter.reasoning, splitter.answer) == expected
    assert "".join(e.text for e in events if e.kind == "reasoning") == expected[0]
    assert "".join(e.text for e in events if e.kind == "answer") == expected[1]


def test_server_split_fields():
    splitter = ReasoningSplitter()
    out = splitter.feed_reasoning("Let me ") + splitter.feed_reasoning("listen.") + splitter.feed_answer("\n\nA dog.")
    assert [(d.kind, d.text) for d in out] == [("reasoning", "Let me"), ("reasoning", " listen."), ("answer", "A dog.")]
    assert np.array_equal(np.array(splitter.answer_parts), np.array(["A dog."]))


def test_without_a_cap_the_engine_leaves_max_tokens_to_the_server():
    from stepaudio_cli.request import Request, max_tokens_to_send

    uncapped = Request(audios=(audio(10),), question="Q", sampling=Sampling())
    capped = Request(audios=(audio(10),), question="Q", sampling=Sampling(max_tokens=500))
    assert max_tokens_to_send(uncapped, 16384) is None  # vLLM fills in exactly what the real prompt leaves
    assert max_tokens_to_send(capped, 16384) == 500
    with pytest.raises(AudioError):  # the audio is still checked against the context first
        max_tokens_to_send(Request(audios=(audio(1200),), question="Q", sampling=Sampling()), 16384)
