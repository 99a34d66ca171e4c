"""Step-Audio-R1 for vLLM: Whisper-style audio encoder -> adapter -> Qwen2 LLM.

Shaped after vLLM's ``qwen2_audio.py``: the audio tower (encoder + adapter) is replicated
on every tensor-parallel rank, the LLM is vLLM's own tensor-parallel Qwen2.

Checkpoint parameter names: ``encoder.*`` (conv1, conv2, positional_embedding,
blocks.N.{attn.{query,key,value,out}, attn_ln, mlp.{0,2}, mlp_ln}, after_norm),
``adapter.*`` (conv, linear1, linear2), ``model.*`` + ``lm_head.*`` (Qwen2).

Inputs: each audio item is cut into chunks of at most 25 s (a client that already sends
25 s items gets one chunk per item); each chunk becomes
``<audio_start>`` + N x ``<audio_patch>`` + ``<audio_end>`` with N from
:func:`stepaudio_cli.audio_tokens.chunk_tokens`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper, init_vllm_registered_model, maybe_prefix
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

from stepaudio_cli.audio_tokens import (
    SAMPLE_RATE,
    adapter_frames,
    encoder_frames,
    item_embeddings,
    max_audio_samples,
    split_chunks,
)
from stepaudio_cli.checkpoint import AUDIO_PATCH, TokenIds
from stepaudio_cli.vllm_plugin import compat
from stepaudio_cli.vllm_plugin.hf_config import StepAudio2Config, StepAudioQwen2Config
from stepaudio_cli.vllm_plugin.mel import log_mel
from stepaudio_cli.vllm_plugin.tower import Adapter, AudioEncoder, encode_chunks

# === Multimodal processing ==============================================================


def _chunk_token_count(mel_len: int) -> int:
    return adapter_frames(encoder_frames(mel_len))


class StepAudio2ProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> StepAudio2Config:
        return self.ctx.get_hf_config((StepAudio2Config, StepAudioQwen2Config))

    def get_data_parser(self) -> MultiModalDataParser:
        # soxr, not vLLM's default torchaudio, which is not always importable.
        return compat.data_parser(
            self,
            target_sr=SAMPLE_RATE,
            target_channels=1,
            audio_resample_method="soxr",
            expected_hidden_size=self._get_expected_hidden_size(),
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int] | None = None):
        # An item of any length is cut into 25 s chunks here, so the longest item is the
        # longest audio whose prompt fits the context; the encoder cache is sized for it.
        return {"audio": item_embeddings(max_audio_samples(seq_len))}

    @functools.cached_property
    def tokens(self) -> TokenIds:
        """The special ids, looked up once per engine (a vocabulary copy per request is slow)."""
        return TokenIds(self.get_tokenizer(), "the served checkpoint")


class StepAudio2DummyInputsBuilder(BaseDummyInputsBuilder[StepAudio2ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return AUDIO_PATCH * mm_counts.get("audio", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        # As long as the longest item get_mm_max_tokens_per_item declares: profiling then
        # measures the encoder on the largest batch of chunks a request can bring.
        overrides = mm_options.get("audio") if mm_options else None
        return {
            "audio": self._get_dummy_audios(
                length=max_audio_samples(seq_len), num_audios=mm_counts.get("audio", 0), overrides=overrides
            )
        }


class StepAudio2MultiModalProcessor(compat.audio_processor_hooks(), BaseMultiModalProcessor[StepAudio2ProcessingInfo]):
    def _process_audio(self, audios: list) -> BatchFeature:
        n_mels = self.info.get_hf_config().audio_encoder_config.n_mels
        mels: list[torch.Tensor] = []
        chunk_lens: list[int] = []
        chunk_counts: list[int] = []
        for audio in audios:
            chunks = split_chunks(np.asarray(audio, dtype=np.float32).reshape(-1))
            for chunk in chunks:
                mel = log_mel(chunk, n_mels)
                mels.append(mel.T)
                chunk_lens.append(mel.shape[1])
            chunk_counts.append(len(chunks))
        return BatchFeature(
            {
                "input_features": torch.cat(mels) if mels else torch.zeros(0, n_mels),
                "audio_chunk_lens": torch.tensor(chunk_lens, dtype=torch.long),
                "audio_chunk_counts": torch.tensor(chunk_counts, dtype=torch.long),
            }
        )

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        counts = hf_inputs.get("audio_chunk_counts", torch.empty(0, dtype=torch.long))
        chunk_lens = hf_inputs.get("audio_chunk_lens", torch.empty(0, dtype=torch.long))
        frames_per_item = (
            torch.stack([c.sum() for c in torch.split(chunk_lens, counts.tolist())])
            if len(counts)
            else torch.empty(0, dtype=torch.long)
        )
        return dict(
            input_features=MultiModalFieldConfig.flat_from_sizes("audio", frames_per_item),
            audio_chunk_lens=MultiModalFieldConfig.flat_from_sizes("audio", counts, keep_on_cpu=True),
            audio_chunk_counts=MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        )

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        tokens = self.info.tokens
        patch, start, end = tokens.audio_patch, tokens.audio_start, tokens.audio_end
        data = out_mm_kwargs.get_data()
        counts = [int(c) for c in data.get("audio_chunk_counts", [])]
        lens = torch.as_tensor(data.get("audio_chunk_lens", [])).reshape(-1).tolist()
        offsets = np.cumsum([0, *counts]).tolist()

        def replacement(item_idx: int) -> PromptUpdateDetails:
            seq: list[int] = []
            for mel_len in lens[offsets[item_idx] : offsets[item_idx + 1]]:
                seq += [start] + [patch] * _chunk_token_count(int(mel_len)) + [end]
            return PromptUpdateDetails.select_token_id(seq, patch)

        return [PromptReplacement(modality="audio", target=[patch], replacement=replacement)]


# === The model ==========================================================================


@MULTIMODAL_REGISTRY.register_processor(
    StepAudio2MultiModalProcessor, info=StepAudio2ProcessingInfo, dummy_inputs=StepAudio2DummyInputsBuilder
)
class StepAudio2ForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    # vLLM's quantization methods read these from the top-level class: the fused layers'
    # checkpoint names (a pre-quantized checkpoint's ignore list and per-layer targets name
    # q_proj, not qkv_proj; bitsandbytes refuses a model without the mapping), and the
    # renaming of the checkpoint's names (ignore entries like "model.layers.0.mlp.down_proj").
    # The audio tower is plain torch: no quantization method ever applies to it.
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.": "language_model.model.", "lm_head.": "language_model.lm_head."},
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_PATCH
        raise ValueError("Step-Audio-R1 takes audio only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: StepAudio2Config = vllm_config.model_config.hf_config
        enc = config.audio_encoder_config
        self.config = config
        self.multimodal_config = vllm_config.model_config.multimodal_config
        with self._mark_tower_model(vllm_config, "audio"):
            self.encoder = AudioEncoder(
                enc.n_mels, enc.n_audio_ctx, enc.n_audio_state, enc.n_audio_head, enc.n_audio_layer
            )
            self.adapter = Adapter(enc.n_audio_state, enc.llm_dim, enc.kernel_size, enc.adapter_stride)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        features = kwargs.get("input_features")
        if features is None:
            return []
        if isinstance(features, (list, tuple)):
            features = torch.cat(list(features))
        lens = kwargs["audio_chunk_lens"]
        lens = torch.cat(list(lens)) if isinstance(lens, (list, tuple)) else lens
        counts = kwargs["audio_chunk_counts"]
        counts = torch.stack(list(counts)) if isinstance(counts, (list, tuple)) else counts
        chunk_lens = [int(n) for n in lens.reshape(-1).tolist()]
        per_chunk = encode_chunks(self.encoder, self.adapter, features.reshape(-1, features.shape[-1]), chunk_lens)
        items, i = [], 0
        for n in counts.reshape(-1).tolist():
            items.append(torch.cat(per_chunk[i : i + n]))
            i += n
        return tuple(items)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def renamed():
            for name, tensor in weights:
                # Some exports store the learned positions as a bare tensor.
                if name == "encoder.positional_embedding":
                    name = "encoder.positional_embedding.weight"
                yield name, tensor

        loader = AutoWeightsLoader(self)
        return loader.load_weights(renamed(), mapper=self.hf_to_vllm_mapper)
