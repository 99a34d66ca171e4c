"""The server's reasoning parsers split on the TEXT </think>: one special token or several plain ones."""

from __future__ import annotations

import pytest

from stepaudio_cli.tiny_checkpoint import MOVED_SPECIAL_TOKENS, SPECIAL_TOKENS, build_tokenizer

pytest.importorskip("vllm")


class Tok:
    """The slice of a tokenizer the parser uses, over the test tokenizers."""

    def __init__(self, special):
        self.t = build_tokenizer(special)

    def encode(self, text, add_special_tokens=False):
        return self.t.encode(text, add_special_tokens=add_special_tokens).ids

    def get_vocab(self):
        return self.t.get_vocab()


@pytest.fixture(params=[SPECIAL_TOKENS, MOVED_SPECIAL_TOKENS], ids=["special-tag", "plain-text-tag"])
def parser(request):
    from stepaudio_cli.vllm_plugin.reasoning import StepAudioR1ReasoningParser

    return StepAudioR1ReasoningParser(Tok(request.param))


def stream(parser, pieces):
    text, reasoning, content = "", [], []
    for piece in pieces:
        delta = parser.extract_reasoning_streaming(text, text + piece, piece, [], [], [])
        text += piece
        if delta is not None:
            reasoning.append(delta.reasoning or "")
            content.append(delta.content or "")
    return "".join(reasoning), "".join(content)


def test_streamed_split_holds_a_tag_cut_across_deltas(parser):
    pieces = ["I hear", " a tone</", "thi", "nk>", "\n\nA ", "beep.</think>x"]
    assert stream(parser, pieces) == ("I hear a tone", "\n\nA beep.</think>x")  # only the first tag splits
    assert stream(parser, ["no tag at all <"]) == ("no tag at all ", "")  # a possible tag start waits


def test_whole_output_split_and_token_level_answers(parser):
    assert parser.extract_reasoning("I think</think>\n\nA dog.") == ("I think", "\n\nA dog.")
    assert parser.extract_reasoning("still thinking") == ("still thinking", None)
    ids = parser.model_tokenizer.encode("I hear</think>A beep.")
    tag = parser.model_tokenizer.encode("</think>")
    assert parser.count_reasoning_tokens(ids) == len(parser.model_tokenizer.encode("I hear"))
    assert parser.extract_content_ids(ids) == parser.model_tokenizer.encode("A beep.")
    assert parser.is_reasoning_end(parser.model_tokenizer.encode("<think>\nI hear")) is False
    assert parser.is_reasoning_end(ids) is True and len(tag) >= 1


def test_raw_parser_keeps_everything_in_content():
    from stepaudio_cli.vllm_plugin.reasoning import StepAudioR1RawParser

    raw = StepAudioR1RawParser(Tok(MOVED_SPECIAL_TOKENS))
    assert raw.extract_reasoning("I think</think>A dog.") == (None, "I think</think>A dog.")
    assert stream(raw, ["I think</", "think>A dog."]) == ("", "I think</think>A dog.")
