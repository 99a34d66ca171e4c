"""Reasoning parser ``step_audio_r1``.

The prompt opens ``<think>``, so the output is reasoning until the first ``</think>``, then
the answer: the behaviour of vLLM's DeepSeek-R1 parser (start tag in the prompt, not in
the output), which we build on. It also adjusts every request so that any client (the
``openai`` package with default settings, say) gets what Step-Audio-R1 needs: special
tokens kept in the text (or ``</think>`` could vanish before the split) and a stop on
``<|EOT|>``.
"""

from __future__ import annotations

from vllm.reasoning.deepseek_r1_reasoning_parser import DeepSeekR1ReasoningParser

from stepaudio_cli.prompt import EOT


class StepAudioR1ReasoningParser(DeepSeekR1ReasoningParser):
    def adjust_request(self, request):
        request = super().adjust_request(request)
        if hasattr(request, "skip_special_tokens"):
            request.skip_special_tokens = False
        eot = self.vocab.get(EOT)
        if eot is not None and hasattr(request, "stop_token_ids"):
            ids = list(request.stop_token_ids or [])
            if eot not in ids:
                request.stop_token_ids = [*ids, eot]
        return request
