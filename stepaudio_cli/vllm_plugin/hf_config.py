"""Hugging Face config classes for Step-Audio-R1 checkpoints (no remote code needed).

Both layouts StepFun's own serving code reads are accepted: nested (``text_config`` +
``audio_encoder_config``) and flat (the text model's keys at the top level). The keys that
change the computation are required (:data:`stepaudio_cli.checkpoint.TEXT_KEYS`): a checkpoint
without ``rope_theta`` fails at start naming it instead of silently running with
transformers' default.
"""

from __future__ import annotations

from transformers import PretrainedConfig, Qwen2Config

from stepaudio_cli.checkpoint import MODEL_TYPES, text_config


class StepAudio2EncoderConfig(PretrainedConfig):
    """``audio_encoder_config``: Whisper-style encoder + adapter sizes."""

    model_type = "step_audio_2_encoder"

    def __init__(
        self,
        n_mels: int = 128,
        n_audio_ctx: int = 1500,
        n_audio_state: int = 1280,
        n_audio_head: int = 20,
        n_audio_layer: int = 32,
        llm_dim: int = 5120,
        kernel_size: int = 3,
        adapter_stride: int = 2,
        **kwargs,
    ) -> None:
        self.n_mels = n_mels
        self.n_audio_ctx = n_audio_ctx
        self.n_audio_state = n_audio_state
        self.n_audio_head = n_audio_head
        self.n_audio_layer = n_audio_layer
        self.llm_dim = llm_dim
        self.kernel_size = kernel_size
        self.adapter_stride = adapter_stride
        super().__init__(**kwargs)


def _init(self, text_config=None, audio_encoder_config=None, **kwargs) -> None:
    if isinstance(text_config, Qwen2Config):  # a copy (to_dict / deepcopy) of a checked config
        self.text_config = text_config
    elif text_config is None and audio_encoder_config is None and not kwargs:
        # transformers builds a bare instance to learn the defaults (to_diff_dict);
        # vLLM never runs one.
        self.text_config = Qwen2Config()
    else:
        raw = {**kwargs, "audio_encoder_config": audio_encoder_config}
        if isinstance(text_config, dict):
            raw["text_config"] = text_config
        self.text_config = Qwen2Config(architectures=["Qwen2ForCausalLM"], **text_config_settings(raw))
    if isinstance(audio_encoder_config, dict):
        audio_encoder_config = StepAudio2EncoderConfig(**audio_encoder_config)
    self.audio_encoder_config = audio_encoder_config if audio_encoder_config is not None else StepAudio2EncoderConfig()
    PretrainedConfig.__init__(self, **kwargs)


def _get_text_config(self, *args, **kwargs):
    return self.text_config


# Two model_types, one behaviour. Plain functions, not a base class: transformers 5 turns a
# config subclass's __init__ into a generated one.
class StepAudio2Config(PretrainedConfig):
    model_type = MODEL_TYPES[0]
    sub_configs = {"text_config": Qwen2Config, "audio_encoder_config": StepAudio2EncoderConfig}
    __init__ = _init
    get_text_config = _get_text_config


class StepAudioQwen2Config(PretrainedConfig):
    """The same model under the other model_type StepFun's serving code accepts."""

    model_type = MODEL_TYPES[1]
    sub_configs = StepAudio2Config.sub_configs
    __init__ = _init
    get_text_config = _get_text_config


def text_config_settings(raw: dict) -> dict:
    """Qwen2Config arguments from a raw config, with transformers' tensor-dtype key renamed."""
    settings = text_config(raw)
    dtype = settings.pop("torch_dtype", None) or raw.get("torch_dtype") or raw.get("dtype")
    if dtype:
        settings["dtype"] = dtype
    return settings
