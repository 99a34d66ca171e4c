"""vLLM plugin: Step-Audio-R1 and R1.1 (``StepAudio2ForCausalLM``, also registered under
R1.1's other architecture name ``StepAudioForCausalLMV2``) on stock vLLM.

Registered through the ``vllm.general_plugins`` entry point, so vLLM calls :func:`register`
in every process it starts (API server, engine core, workers). Registration is idempotent.
Nothing here imports torch or vLLM at module import time.
"""

from __future__ import annotations

from stepaudio_cli.checkpoint import ARCHITECTURES

REASONING_PARSER = "step_audio_r1"
RAW_REASONING_PARSER = "step_audio_r1_raw"  # everything in `content`, as StepFun's server sends it
#: A request's reasoning-length settings, for the plugin's logits processor (logits_processor.py).
THINK_BUDGET_ARG = "stepaudio_think_budget"
THINK_MIN_ARG = "stepaudio_min_think"


def thinking_args(budget: int | None, min_tokens: int | None) -> dict[str, int]:
    """What a request sends to limit its reasoning: ``SamplingParams.extra_args`` in-process,
    ``vllm_xargs`` to a server of ours."""
    args = {}
    if budget is not None:
        args[THINK_BUDGET_ARG] = int(budget)
    if min_tokens:
        args[THINK_MIN_ARG] = int(min_tokens)
    return args


_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from stepaudio_cli.vllm_plugin.hf_config import StepAudio2Config, StepAudioQwen2Config

    for config_class in (StepAudio2Config, StepAudioQwen2Config):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    for architecture in ARCHITECTURES:
        if architecture not in ModelRegistry.get_supported_archs():
            # Lazy "module:class" form: the model module (and its processor registration)
            # is imported only where the model is actually built or its inputs processed.
            ModelRegistry.register_model(architecture, "stepaudio_cli.vllm_plugin.model:StepAudio2ForCausalLM")
    from vllm.reasoning import ReasoningParserManager

    for name, cls in ((REASONING_PARSER, "StepAudioR1ReasoningParser"), (RAW_REASONING_PARSER, "StepAudioR1RawParser")):
        if name not in ReasoningParserManager.list_registered():
            ReasoningParserManager.register_lazy_module(name, "stepaudio_cli.vllm_plugin.reasoning", cls)
    _registered = True
