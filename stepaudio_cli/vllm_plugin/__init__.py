"""vLLM plugin: Step-Audio-R1 (``StepAudio2ForCausalLM``) on stock vLLM.

Registered through the ``vllm.general_plugins`` entry point, so vLLM calls :func:`register`
in every process it starts (API server, engine core, workers). Registration is idempotent.
Nothing here imports torch or vLLM at module import time.
"""

from __future__ import annotations

ARCHITECTURE = "StepAudio2ForCausalLM"
MODEL_TYPE = "step_audio_2"
REASONING_PARSER = "step_audio_r1"

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from stepaudio_cli.vllm_plugin.config import StepAudio2Config

    AutoConfig.register(MODEL_TYPE, StepAudio2Config, exist_ok=True)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        # Lazy "module:class" form: the model module (and its processor registration)
        # is imported only where the model is actually built or its inputs processed.
        ModelRegistry.register_model(ARCHITECTURE, "stepaudio_cli.vllm_plugin.model:StepAudio2ForCausalLM")
    try:
        from vllm.reasoning import ReasoningParserManager

        if REASONING_PARSER not in ReasoningParserManager.list_registered():
            ReasoningParserManager.register_lazy_module(
                REASONING_PARSER, "stepaudio_cli.vllm_plugin.reasoning", "StepAudioR1ReasoningParser"
            )
    except ImportError:  # very old vLLM without reasoning parsers: answers still split client-side
        pass
    _registered = True
