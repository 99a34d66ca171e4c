"""Logits processor for the reasoning length dial (in-process engine).

A request opts in through ``SamplingParams.extra_args["stepaudio_thinking"]`` =
``{"end_ids", "stop_ids", "budget", "min"}``. ``end_ids`` is ``</think>`` as the tokenizer
writes it: one special token, or several plain ones. Output tokens before it are
reasoning: once ``budget`` of them exist, the rest of the tag is forced token by token;
until ``min`` exist, the tag's first token is forbidden; the stop tokens are forbidden
while the reasoning is open (a constrained request always gets an answer). After the tag
nothing is changed.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

EXTRA_ARGS_KEY = "stepaudio_thinking"


def make_request_processor(end_ids: list[int], stop_ids: list[int], budget: int | None, min_tokens: int | None):
    state = {"closed": False}
    n_end = len(end_ids)

    def process(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if state["closed"]:
            return logits
        n = len(output_ids)
        if n >= n_end and list(output_ids[n - n_end :]) == end_ids:
            state["closed"] = True
            return logits
        if budget is not None and n >= budget:
            done = _tag_prefix_at_end(output_ids, end_ids)
            logits.fill_(float("-inf"))
            logits[end_ids[done]] = 0.0
        else:
            if min_tokens and n < min_tokens:
                logits[end_ids[0]] = float("-inf")
            for stop in stop_ids:
                logits[stop] = float("-inf")
        return logits

    return process


def _tag_prefix_at_end(output_ids: list[int], end_ids: list[int]) -> int:
    """How many of the tag's tokens the output already ends with (< len(end_ids))."""
    for k in range(min(len(end_ids) - 1, len(output_ids)), 0, -1):
        if list(output_ids[-k:]) == end_ids[:k]:
            return k
    return 0


class ThinkingLogitsProcessor(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        spec = (params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if not spec:
            return None
        return make_request_processor(
            list(spec["end_ids"]), spec.get("stop_ids") or [], spec.get("budget"), spec.get("min")
        )
