"""Logits processor for the reasoning length dial (in-process engine).

A request opts in through ``SamplingParams.extra_args["stepaudio_thinking"]`` =
``{"end_id", "stop_ids", "budget", "min"}``. Output tokens before ``</think>`` are reasoning:
once ``budget`` of them exist, ``</think>`` is the only allowed next token; until ``min``
exist, ``</think>`` is forbidden; the stop tokens are forbidden while the reasoning is open
(a constrained request always gets an answer). After ``</think>`` nothing is changed.
"""

from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

EXTRA_ARGS_KEY = "stepaudio_thinking"


def make_request_processor(end_id: int, stop_ids: list[int], budget: int | None, min_tokens: int | None):
    state = {"seen": 0, "closed": False}

    def process(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if state["closed"]:
            return logits
        if end_id in output_ids[state["seen"] :]:
            state["closed"] = True
            return logits
        state["seen"] = n = len(output_ids)
        if budget is not None and n >= budget:
            logits.fill_(float("-inf"))
            logits[end_id] = 0.0
        else:
            if min_tokens and n < min_tokens:
                logits[end_id] = float("-inf")
            for stop in stop_ids:
                logits[stop] = float("-inf")
        return logits

    return process


class ThinkingLogitsProcessor(AdapterLogitsProcessor):
    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        spec = (params.extra_args or {}).get(EXTRA_ARGS_KEY)
        if not spec:
            return None
        return make_request_processor(spec["end_id"], spec.get("stop_ids") or [], spec.get("budget"), spec.get("min"))
