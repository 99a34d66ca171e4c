"""Reasoning parsers ``step_audio_r1`` and ``step_audio_r1_raw``.

The prompt opens ``<think>``, so the output is reasoning until the first ``</think>``, then
the answer. The split is on the TEXT ``</think>``, not on a token id: whether the real
tokenizer has ``</think>`` as one special token is not known, and StepFun's own clients
split on the text too. Token-level answers (``is_reasoning_end``, ``extract_content_ids``,
``count_reasoning_tokens``) match the tag's token sequence.

Both parsers adjust every request so that any client (the ``openai`` package with default
settings, say) gets what Step-Audio-R1 needs: special tokens kept in the text (or the tag
could vanish before the split) and a stop on ``<|EOT|>``. ``step_audio_r1_raw`` leaves the
whole text (reasoning, ``</think>``, answer) in ``content``, as StepFun's server does, for
clients that split it themselves (``stepaudio serve --raw-reasoning``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from vllm.reasoning.abs_reasoning_parsers import ReasoningParser

from stepaudio_cli.checkpoint import EOT, THINK_END, THINK_START, find_sequence
from stepaudio_cli.splitter import partial_tag_suffix
from stepaudio_cli.vllm_plugin.compat import delta_message


class StepAudioR1ReasoningParser(ReasoningParser):
    @property
    def reasoning_start_str(self) -> str:
        return THINK_START

    @property
    def reasoning_end_str(self) -> str:
        return THINK_END

    # The tags' token sequences, tokenized once per parser rather than on every call.
    @functools.cached_property
    def _start_ids(self) -> list[int]:
        return list(self.model_tokenizer.encode(THINK_START, add_special_tokens=False))

    @functools.cached_property
    def _end_ids(self) -> list[int]:
        return list(self.model_tokenizer.encode(THINK_END, add_special_tokens=False))

    @functools.cached_property
    def _eot_id(self) -> int | None:
        ids = self.model_tokenizer.encode(EOT, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    # --- requests -------------------------------------------------------------------------

    def adjust_request(self, request):
        request = super().adjust_request(request)
        if hasattr(request, "skip_special_tokens"):
            request.skip_special_tokens = False
        eot = self._eot_id
        if eot is not None and hasattr(request, "stop_token_ids"):
            ids = list(request.stop_token_ids or [])
            if eot not in ids:
                request.stop_token_ids = [*ids, eot]
        return request

    # --- text -------------------------------------------------------------------------------

    def extract_reasoning(self, model_output: str, request=None):
        reasoning, tag, content = model_output.partition(THINK_END)
        return (reasoning or None), (content if tag else None)

    def extract_reasoning_streaming(
        self,
        previous_text: str,
        current_text: str,
        delta_text: str,
        previous_token_ids: Sequence[int],
        current_token_ids: Sequence[int],
        delta_token_ids: Sequence[int],
    ):
        # Stateless: what is safe to show of each part after the previous and the current
        # text; the difference is this delta. A tag cut across deltas is held back.
        before_r, before_c = _visible(previous_text)
        now_r, now_c = _visible(current_text)
        reasoning, content = now_r[len(before_r) :], now_c[len(before_c) :]
        if not reasoning and not content:
            return None
        return delta_message(reasoning=reasoning or None, content=content or None)

    # --- tokens ---------------------------------------------------------------------------

    def is_reasoning_end(self, input_ids: Sequence[int]) -> bool:
        end_at = _last_end(input_ids, self._end_ids)
        return end_at >= 0 and end_at > _last_end(input_ids, self._start_ids)

    def extract_content_ids(self, input_ids: list[int]) -> list[int]:
        at = find_sequence(input_ids, self._end_ids)
        return list(input_ids[at:]) if at >= 0 else []

    def count_reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        at = find_sequence(token_ids, self._end_ids)
        return len(token_ids) if at < 0 else at - len(self._end_ids)


class StepAudioR1RawParser(StepAudioR1ReasoningParser):
    """Everything stays in ``content``; the request adjustments still apply."""

    def extract_reasoning(self, model_output: str, request=None):
        return None, model_output

    def extract_reasoning_streaming(self, previous_text, current_text, delta_text, *ids):
        return delta_message(content=delta_text) if delta_text else None


def _visible(text: str) -> tuple[str, str]:
    """(reasoning, content) of ``text`` as far as can be shown now: before the tag, a
    trailing piece that may be the start of the tag is held back."""
    reasoning, tag, content = text.partition(THINK_END)
    if tag:
        return reasoning, content
    return text[: len(text) - partial_tag_suffix(text, THINK_END)], ""


def _last_end(ids: Sequence[int], seq: Sequence[int]) -> int:
    """Index just past the last occurrence of ``seq`` in ``ids``, or -1."""
    n = len(seq)
    for i in range(len(ids) - n, -1, -1):
        if n and list(ids[i : i + n]) == list(seq):
            return i + n
    return -1
