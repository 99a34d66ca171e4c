"""An independent forward pass of Step-Audio-R1 for checking the vLLM plugin.

Written from the architecture description with plain functional torch ops, the mel
features from transformers' WhisperFeatureExtractor and the LLM from transformers'
Qwen2ForCausalLM; it reads the checkpoint's safetensors by parameter name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def whisper_mel(samples: np.ndarray, n_mels: int = 128) -> torch.Tensor:
    """(n_mels, T): WhisperFeatureExtractor on the audio right-padded with 479 zeros."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=16000, hop_length=160, n_fft=400)
    padded = np.pad(samples.astype(np.float32), (0, 479))
    feats = fe(padded, sampling_rate=16000, padding="longest", return_tensors="np", return_attention_mask=False)
    return torch.from_numpy(feats["input_features"][0])


def _attention(x, w, p, heads):
    q = F.linear(x, w[p + "query.weight"], w[p + "query.bias"])
    k = F.linear(x, w[p + "key.weight"])
    v = F.linear(x, w[p + "value.weight"], w[p + "value.bias"])
    t, d = x.shape
    hd = d // heads
    q, k, v = (z.view(t, heads, hd).transpose(0, 1) for z in (q, k, v))
    att = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd), dim=-1)
    y = (att @ v).transpose(0, 1).reshape(t, d)
    return F.linear(y, w[p + "out.weight"], w[p + "out.bias"])


def audio_embeddings(w: dict, cfg: dict, samples: np.ndarray) -> torch.Tensor:
    """(N, llm_dim) for one chunk of at most 25 s."""
    enc = cfg["audio_encoder_config"]
    mel = whisper_mel(samples, enc["n_mels"])[None]
    x = F.gelu(F.conv1d(mel, w["encoder.conv1.weight"], w["encoder.conv1.bias"], padding=1))
    x = F.gelu(F.conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], stride=2, padding=1))[0].T
    x = x + w["encoder.positional_embedding.weight"][: x.shape[0]]
    d = x.shape[1]
    for i in range(enc["n_audio_layer"]):
        p = f"encoder.blocks.{i}."
        h = F.layer_norm(x, (d,), w[p + "attn_ln.weight"], w[p + "attn_ln.bias"])
        x = x + _attention(h, w, p + "attn.", enc["n_audio_head"])
        h = F.layer_norm(x, (d,), w[p + "mlp_ln.weight"], w[p + "mlp_ln.bias"])
        h = F.linear(
            F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"])), w[p + "mlp.2.weight"], w[p + "mlp.2.bias"]
        )
        x = x + h
    x = F.avg_pool1d(x.T[None], 2, 2)[0].T
    x = F.layer_norm(x, (d,), w["encoder.after_norm.weight"], w["encoder.after_norm.bias"])
    y = F.gelu(F.conv1d(x.T[None], w["adapter.conv.weight"], w["adapter.conv.bias"], stride=2, padding=1))[0].T
    y = F.relu(F.linear(y, w["adapter.linear1.weight"], w["adapter.linear1.bias"]))
    return F.linear(y, w["adapter.linear2.weight"], w["adapter.linear2.bias"])


def next_token_logprobs(ckpt: Path, prompt_ids: list[int], chunks: list[np.ndarray], patch_id: int) -> torch.Tensor:
    """log-softmax over the vocabulary for the token after ``prompt_ids`` (already expanded)."""
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = json.loads((ckpt / "config.json").read_text())
    w = load_file(str(ckpt / "model.safetensors"))
    text_cfg = {k: v for k, v in cfg["text_config"].items() if k not in ("model_type", "architectures")}
    llm = Qwen2ForCausalLM(Qwen2Config(**text_cfg, attn_implementation="eager")).eval()
    missing, unexpected = llm.load_state_dict(
        {k: v for k, v in w.items() if k.startswith(("model.", "lm_head."))}, strict=False
    )
    assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
    with torch.no_grad():
        ids = torch.tensor([prompt_ids])
        embeds = llm.get_input_embeddings()(ids)
        if chunks:
            audio = torch.cat([audio_embeddings(w, cfg, c) for c in chunks])
            mask = ids[0] == patch_id
            assert int(mask.sum()) == audio.shape[0], (int(mask.sum()), audio.shape)
            embeds[0, mask] = audio
        logits = llm(inputs_embeds=embeds).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1)
