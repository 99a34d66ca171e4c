"""Hugging Face config classes for ``model_type: step_audio_2`` (no remote code needed)."""

from __future__ import annotations

from transformers import PretrainedConfig, Qwen2Config


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


class StepAudio2Config(PretrainedConfig):
    model_type = "step_audio_2"
    sub_configs = {"text_config": Qwen2Config, "audio_encoder_config": StepAudio2EncoderConfig}

    def __init__(self, text_config=None, audio_encoder_config=None, **kwargs) -> None:
        if isinstance(text_config, dict):
            text_config = dict(text_config)
            text_config.pop("model_type", None)
            text_config = Qwen2Config(**text_config)
        self.text_config = text_config if text_config is not None else Qwen2Config()
        if isinstance(audio_encoder_config, dict):
            audio_encoder_config = StepAudio2EncoderConfig(**audio_encoder_config)
        self.audio_encoder_config = (
            audio_encoder_config if audio_encoder_config is not None else StepAudio2EncoderConfig()
        )
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.text_config
