"""Reasoning parser ``step_audio_r1``: the prompt opens ``<think>``, so the output is
reasoning until the first ``</think>``, then the answer. That is exactly the behaviour of
vLLM's DeepSeek-R1 parser (start tag in the prompt, not in the output), which we reuse."""

from __future__ import annotations

from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser


class StepAudioR1ReasoningParser(DeepSeekR1ReasoningParser):
    pass
