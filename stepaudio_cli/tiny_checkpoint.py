"""Tiny random Step-Audio-R1 checkpoints for tests and benchmarks.

Same architecture, config keys, parameter names and special tokens as the real model;
sizes small enough for vLLM on a CPU (LLM head_dim 32, which CPU attention supports).
The vocabulary keeps the real size (158,720) so the real stop id ``<|EOT|>`` = 151665 is
valid; every id decodes to some text.

``script=(reasoning, answer)`` builds a deterministic checkpoint: the LLM's attention and
MLP outputs are zeroed, so each step's logits depend only on the current token (a bigram
table), and the table walks ``\\n`` -> reasoning tokens -> ``</think>`` -> answer tokens ->
``<|EOT|>``. Used to test the reasoning split end to end on the real engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stepaudio_cli.checkpoint import TEXT_LINEARS

VOCAB_SIZE = 158_720
SPECIAL_TOKENS = {
    "<|endoftext|>": 151643,
    "<|EOT|>": 151665,  # the real stop id
    "<|BOT|>": 151666,
    "<think>": 151667,
    "</think>": 151668,
    "<audio_start>": 151688,
    "<audio_end>": 151689,
    "<audio_patch>": 151690,
}

_CORPUS = """What is happening in this audio? Describe the sound. Is someone speaking?
The recording has a steady tone, a beep, noise, music, a voice, a dog barking, a car passing.
Let me think about the pitch, the rhythm, the loudness and the background. I hear a sound.
The answer is: a sine wave at four hundred and forty hertz. Yes. No. Maybe. It sounds calm.
Transcribe the speech. Who is talking? How many speakers are there? What emotion is expressed?
"""


@dataclass(frozen=True)
class TinySizes:
    hidden: int = 64
    layers: int = 2
    heads: int = 2  # head_dim 32
    kv_heads: int = 1
    intermediate: int = 128
    n_mels: int = 128
    audio_ctx: int = 1500
    audio_state: int = 64
    audio_heads: int = 2
    audio_layers: int = 2
    adapter_inner: int = 2048


#: A tokenizer that breaks the guesses about the real one: every id moved, and no
#: <think>/</think> special tokens (the tags are plain text, several tokens each).
MOVED_SPECIAL_TOKENS = {
    "<|endoftext|>": 152000,
    "<|EOT|>": 152001,
    "<|BOT|>": 152002,
    "<audio_start>": 152003,
    "<audio_end>": 152004,
    "<audio_patch>": 152005,
}


def build_tokenizer(special_tokens: dict[str, int] = SPECIAL_TOKENS):
    """A byte-level BPE tokenizer with the given special tokens at their ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer)
    spec = json.loads(tok.to_str())
    vocab: dict[str, int] = spec["model"]["vocab"]
    vocab.update(special_tokens)  # added tokens resolve to these ids
    used = set(vocab.values())
    # Fill every other id with a decodable filler so random weights never emit an unknown id.
    for i in range(VOCAB_SIZE):
        if i not in used:
            vocab[f"<x{i}>"] = i
    spec["added_tokens"] = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for t, i in sorted(special_tokens.items(), key=lambda kv: kv[1])
    ]
    return Tokenizer.from_str(json.dumps(spec))


def build_checkpoint(
    out_dir: str | Path,
    *,
    seed: int = 0,
    sizes: TinySizes = TinySizes(),
    script: tuple[str, str] | None = None,
    encoder_seed: int | None = None,
    special_tokens: dict[str, int] = SPECIAL_TOKENS,
    flat_config: bool = False,
    drop_text_keys: tuple[str, ...] = (),
    names: tuple[str, str] | None = None,
    quantize: str | None = None,
) -> Path:
    """Write config.json, tokenizer files and model.safetensors; return the directory.

    ``encoder_seed`` draws the audio tower from its own seed, so two checkpoints can share
    the LLM and differ only in the encoder. ``special_tokens`` (e.g. MOVED_SPECIAL_TOKENS),
    ``flat_config`` (the text keys at the top level, StepFun's other layout) and
    ``drop_text_keys`` (e.g. ``("rope_theta",)``) make variants that break our guesses.
    ``names`` = (model_type, architecture) replaces R1's (e.g. :data:`R1_1_ORIGIN_NAMES`, with
    ``flat_config``: the layout of R1.1's config_origin.json). ``quantize="w4a16"`` stores the
    LLM's linear layers pre-quantized (:func:`w4a16_checkpoint_tensors`).
    """
    from safetensors.numpy import save_file

    from stepaudio_cli.checkpoint import make_config

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(special_tokens)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": "<|EOT|>",
                "pad_token": "<|endoftext|>",
                "bos_token": None,
                "model_max_length": 65536,
                "clean_up_tokenization_spaces": False,
            },
            indent=1,
        )
    )
    s = sizes
    config = make_config(
        {
            "hidden_size": s.hidden,
            "intermediate_size": s.intermediate,
            "num_hidden_layers": s.layers,
            "num_attention_heads": s.heads,
            "num_key_value_heads": s.kv_heads,
            "vocab_size": VOCAB_SIZE,
        },
        {
            "n_mels": s.n_mels,
            "n_audio_ctx": s.audio_ctx,
            "n_audio_state": s.audio_state,
            "n_audio_head": s.audio_heads,
            "n_audio_layer": s.audio_layers,
        },
        dtype="float32",
        eos_token_id=special_tokens["<|EOT|>"],
    )
    for key in drop_text_keys:
        del config["text_config"][key]
    if flat_config:
        text = config.pop("text_config")
        config.update({k: v for k, v in text.items() if k not in ("model_type", "architectures")})
    if names is not None:
        config["model_type"], config["architectures"] = names[0], [names[1]]
    tensors = _llm_weights(np.random.default_rng(seed), s)
    tensors.update(_audio_weights(np.random.default_rng(seed + 1 if encoder_seed is None else encoder_seed), s))
    if script is not None:
        _apply_script(tensors, tokenizer, script, np.random.default_rng(seed + 2), s, special_tokens)
    if quantize is not None:
        if quantize != "w4a16":
            raise ValueError(f"quantize: only 'w4a16', not {quantize!r}")
        tensors = w4a16_checkpoint_tensors(tensors)
        config["quantization_config"] = W4A16_CONFIG
    (out / "config.json").write_text(json.dumps(config, indent=1))
    save_file(
        {k: np.ascontiguousarray(v, dtype=v.dtype if v.dtype.kind == "i" else np.float32) for k, v in tensors.items()},
        str(out / "model.safetensors"),
    )
    return out


#: (model_type, architecture) of R1.1's flat ``config_origin.json``.
R1_1_ORIGIN_NAMES = ("step_audio_qwen2", "StepAudioForCausalLMV2")

W4A16_GROUP = 32
#: A compressed-tensors ``quantization_config`` as llm-compressor writes it for the W4A16
#: scheme, with the ignore list the community builds of R1/R1.1 use.
W4A16_CONFIG = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "quantization_status": "compressed",
    "ignore": ["lm_head", "re:encoder.*", "re:adapter.*"],
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": 4,
                "type": "int",
                "symmetric": True,
                "strategy": "group",
                "group_size": W4A16_GROUP,
                "dynamic": False,
                "actorder": None,
                "observer": "minmax",
            },
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    },
}


def w4a16_pack(weight: np.ndarray, group: int = W4A16_GROUP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weight_packed, weight_scale, dequantized weight) of a float [out, in] matrix in
    compressed-tensors' pack-quantized layout: symmetric int4 per group of ``group`` inputs,
    stored offset by 8, eight to an int32 along the input dimension, lowest nibble first."""
    out_dim, in_dim = weight.shape
    grouped = weight.reshape(out_dim, in_dim // group, group)
    scale = np.abs(grouped).max(axis=2) / 7.0
    scale[scale == 0] = 1.0
    q = np.clip(np.round(grouped / scale[..., None]), -8, 7).astype(np.int64)
    dequantized = (q * scale[..., None]).reshape(out_dim, in_dim).astype(np.float32)
    nibbles = (q.reshape(out_dim, in_dim // 8, 8) + 8).astype(np.uint32)
    packed = np.zeros((out_dim, in_dim // 8), dtype=np.uint32)
    for i in range(8):
        packed |= nibbles[..., i] << np.uint32(4 * i)
    return packed.view(np.int32), scale.astype(np.float32), dequantized


def w4a16_checkpoint_tensors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The LLM's linear weights replaced by their W4A16 form (biases, norms, embeddings,
    the head and the audio tower stay as they are)."""
    out = {}
    for name, value in tensors.items():
        base = name.removesuffix(".weight")
        if name.endswith(".weight") and base.startswith("model.layers.") and base.endswith(TEXT_LINEARS):
            packed, scale, _ = w4a16_pack(value)
            out[base + ".weight_packed"] = packed
            out[base + ".weight_scale"] = scale
            out[base + ".weight_shape"] = np.array(value.shape, dtype=np.int64)
        else:
            out[name] = value
    return out


def _normal(rng, *shape, std=0.02):
    return rng.normal(0.0, std, size=shape).astype(np.float32)


def _llm_weights(rng, s: TinySizes) -> dict[str, np.ndarray]:
    head_dim = s.hidden // s.heads
    t = {"model.embed_tokens.weight": _normal(rng, VOCAB_SIZE, s.hidden, std=1.0)}
    for i in range(s.layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = _normal(rng, s.hidden, s.hidden, std=0.2)
        t[p + "self_attn.q_proj.bias"] = _normal(rng, s.hidden)
        t[p + "self_attn.k_proj.weight"] = _normal(rng, s.kv_heads * head_dim, s.hidden, std=0.2)
        t[p + "self_attn.k_proj.bias"] = _normal(rng, s.kv_heads * head_dim)
        t[p + "self_attn.v_proj.weight"] = _normal(rng, s.kv_heads * head_dim, s.hidden, std=0.2)
        t[p + "self_attn.v_proj.bias"] = _normal(rng, s.kv_heads * head_dim)
        t[p + "self_attn.o_proj.weight"] = _normal(rng, s.hidden, s.hidden, std=0.2)
        t[p + "mlp.gate_proj.weight"] = _normal(rng, s.intermediate, s.hidden, std=0.2)
        t[p + "mlp.up_proj.weight"] = _normal(rng, s.intermediate, s.hidden, std=0.2)
        t[p + "mlp.down_proj.weight"] = _normal(rng, s.hidden, s.intermediate, std=0.2)
        t[p + "input_layernorm.weight"] = 1.0 + _normal(rng, s.hidden, std=0.1)
        t[p + "post_attention_layernorm.weight"] = 1.0 + _normal(rng, s.hidden, std=0.1)
    t["model.norm.weight"] = 1.0 + _normal(rng, s.hidden, std=0.1)
    t["lm_head.weight"] = _normal(rng, VOCAB_SIZE, s.hidden, std=0.2)
    return t


def _audio_weights(rng, s: TinySizes) -> dict[str, np.ndarray]:
    d = s.audio_state
    t = {
        "encoder.conv1.weight": _normal(rng, d, s.n_mels, 3, std=0.1),
        "encoder.conv1.bias": _normal(rng, d),
        "encoder.conv2.weight": _normal(rng, d, d, 3, std=0.1),
        "encoder.conv2.bias": _normal(rng, d),
        "encoder.positional_embedding.weight": _normal(rng, s.audio_ctx, d, std=0.5),
        "encoder.after_norm.weight": 1.0 + _normal(rng, d, std=0.1),
        "encoder.after_norm.bias": _normal(rng, d),
    }
    for i in range(s.audio_layers):
        p = f"encoder.blocks.{i}."
        for name in ("query", "value", "out"):
            t[p + f"attn.{name}.weight"] = _normal(rng, d, d, std=0.15)
            t[p + f"attn.{name}.bias"] = _normal(rng, d)
        t[p + "attn.key.weight"] = _normal(rng, d, d, std=0.15)
        t[p + "attn_ln.weight"] = 1.0 + _normal(rng, d, std=0.1)
        t[p + "attn_ln.bias"] = _normal(rng, d)
        t[p + "mlp.0.weight"] = _normal(rng, 4 * d, d, std=0.15)
        t[p + "mlp.0.bias"] = _normal(rng, 4 * d)
        t[p + "mlp.2.weight"] = _normal(rng, d, 4 * d, std=0.15)
        t[p + "mlp.2.bias"] = _normal(rng, d)
        t[p + "mlp_ln.weight"] = 1.0 + _normal(rng, d, std=0.1)
        t[p + "mlp_ln.bias"] = _normal(rng, d)
    t["adapter.conv.weight"] = _normal(rng, d, d, 3, std=0.1)
    t["adapter.conv.bias"] = _normal(rng, d)
    t["adapter.linear1.weight"] = _normal(rng, s.adapter_inner, d, std=0.1)
    t["adapter.linear1.bias"] = _normal(rng, s.adapter_inner)
    t["adapter.linear2.weight"] = _normal(rng, s.hidden, s.adapter_inner, std=0.1)
    t["adapter.linear2.bias"] = _normal(rng, s.hidden)
    return t


def _apply_script(tensors, tokenizer, script: tuple[str, str], rng, s: TinySizes, special_tokens) -> None:
    reasoning, answer = script
    chain = [tokenizer.token_to_id("Ċ")]  # "\n", the last prompt token (after "<think>")
    chain += tokenizer.encode(reasoning).ids + tokenizer.encode("</think>").ids  # one token, or several
    chain += tokenizer.encode(answer).ids + [special_tokens["<|EOT|>"]]
    if None in chain or len(set(chain)) != len(chain):
        raise ValueError("script tokens must be distinct (each token has exactly one successor)")
    for i in range(s.layers):
        tensors[f"model.layers.{i}.self_attn.o_proj.weight"][:] = 0.0
        tensors[f"model.layers.{i}.mlp.down_proj.weight"][:] = 0.0
    tensors["model.norm.weight"][:] = 1.0
    lm_head = tensors["lm_head.weight"]
    lm_head *= 0.01
    embed = tensors["model.embed_tokens.weight"]
    for a, b in zip(chain, chain[1:]):
        direction = rng.normal(size=s.hidden).astype(np.float32)
        direction /= np.linalg.norm(direction)
        embed[a] = direction * np.sqrt(s.hidden)  # RMSNorm leaves it as is
        lm_head[b] = direction * 8.0  # logit of b after a: ~8 * sqrt(hidden) = 64
