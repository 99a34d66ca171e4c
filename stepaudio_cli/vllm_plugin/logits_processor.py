"""Logits processor for the reasoning length dial: the in-process engine and every server of ours
(`stepaudio serve`, resident engines) load it, so a request gets the same tokens on each.

A request opts in through ``SamplingParams.extra_args`` (a server's requests: ``vllm_xargs``)
with ``stepaudio_think_budget`` and/or ``stepaudio_min_think`` (whole numbers; see
:func:`stepaudio_cli.vllm_plugin.thinking_args`). The token ids come from the served checkpoint itself, looked up once
(``checkpoint.TokenIds``): ``</think>`` as its tokenizer writes it (one special token, or several
plain ones) and the stop tokens. Output tokens before the tag are reasoning: once the budget of
them exist, the rest of the tag is forced token by token; until the minimum exist, the tag's
first token is forbidden; the stop tokens are forbidden while the reasoning is open (a
constrained request always gets an answer). After the tag nothing is changed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from stepaudio_cli.vllm_plugin import THINK_BUDGET_ARG, THINK_MIN_ARG


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
    def __init__(self, vllm_config, device, is_pin_memory) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._model_config = vllm_config.model_config
        self._ids = None  # looked up at the first request that opts in

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params):
        args = params.extra_args or {}
        budget, min_tokens = _count(args.get(THINK_BUDGET_ARG)), _count(args.get(THINK_MIN_ARG))
        if budget is None and not min_tokens:
            return None
        ids = self._token_ids()
        return make_request_processor(ids.think_end, ids.stop, budget, min_tokens)

    def _token_ids(self):
        if self._ids is None:
            from transformers import AutoTokenizer

            from stepaudio_cli.checkpoint import TokenIds

            mc = self._model_config
            tokenizer = AutoTokenizer.from_pretrained(mc.tokenizer, trust_remote_code=mc.trust_remote_code)
            config_file = Path(mc.model) / "config.json"
            config = json.loads(config_file.read_bytes()) if config_file.is_file() else {}
            self._ids = TokenIds(tokenizer, str(mc.model), config)
        return self._ids


def _count(value) -> int | None:
    """A whole number of tokens from a request (a server hands over what the client sent)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number >= 0 else None
