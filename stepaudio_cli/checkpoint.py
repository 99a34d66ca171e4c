"""What a Step-Audio checkpoint is and where it lives: architecture and token names, the config
schema (required keys, nested and flat layouts), token ids looked up from the tokenizer,
resolving a path or hub repo id, the up-front check of a model folder (its weight files:
``weight_files``), its quantization and weight arithmetic."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from stepaudio_cli.errors import UserError
from stepaudio_cli.weight_files import read_weights

ARCHITECTURE = "StepAudio2ForCausalLM"
#: Every architecture name the model's configs use for the same network: R1's config.json and
#: the community quantized builds say ``StepAudio2ForCausalLM``; R1.1's ``config_origin.json``
#: (flat, ``step_audio_qwen2``) says ``StepAudioForCausalLMV2``.
ARCHITECTURES = (ARCHITECTURE, "StepAudioForCausalLMV2")

# The model's special tokens, by name. Their ids always come from the checkpoint's
# tokenizer (TokenIds below); only configs written for tests and `bench` carry ids.
BOT = "<|BOT|>"
EOT = "<|EOT|>"
THINK_START = "<think>"
THINK_END = "</think>"
#: The assistant turn's start: reasoning opened (what a request continues).
ASSISTANT_PREFIX = THINK_START + "\n"
#: The format the model was trained on for direct answers: an empty reasoning block.
NO_THINK_PREFIX = THINK_START + "\n\n" + THINK_END + "\n"
AUDIO_START = "<audio_start>"
AUDIO_PATCH = "<audio_patch>"
AUDIO_END = "<audio_end>"
#: ``step_audio_2`` is what StepFun's configs declare (R1, and R1.1's config.json as the hub
#: lists it); ``step_audio_qwen2`` is R1.1's flat ``config_origin.json``, which their serving
#: code also accepts.
MODEL_TYPES = ("step_audio_2", "step_audio_qwen2")

#: Text-model keys that change the computation. Each must be in config.json (nested under
#: ``text_config``, or at the top level in the flat layout): a default would be a guess.
#: The note says what StepFun's serving code assumes when the key is absent.
TEXT_KEYS = {
    "hidden_size": None,
    "intermediate_size": None,
    "num_hidden_layers": None,
    "num_attention_heads": None,
    "num_key_value_heads": "num_attention_groups",  # StepFun's name for the same number
    "vocab_size": None,
    "rope_theta": "StepFun's code assumes 1000000.0",
    "max_position_embeddings": "StepFun's code assumes 8192",
}
#: The text model's linear layers in each decoder layer, as checkpoints name them
#: (``model.layers.N.`` + name).
TEXT_LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)
#: Optional text keys that are copied through when present.
TEXT_OPTIONAL = (
    "rms_norm_eps",
    "rope_scaling",
    "rope_parameters",
    "hidden_act",
    "tie_word_embeddings",
    "eos_token_id",
    "pad_token_id",
    "torch_dtype",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "head_dim",
)


#: Step-Audio-R1's published sizes: Qwen2.5-32B + a Whisper-style encoder 1280 wide.
R1_TEXT_SIZES = {
    "hidden_size": 5120,
    "intermediate_size": 27648,
    "num_hidden_layers": 64,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "vocab_size": 158720,
}
R1_AUDIO_SIZES = {"n_mels": 128, "n_audio_ctx": 1500, "n_audio_state": 1280, "n_audio_head": 20, "n_audio_layer": 32}
EOT_ID_GUESS = 151665  # <|EOT|>; only to write test/bench configs. Running code looks ids up.
#: The longest context of the family (R1.1's 65,536 positions, about 85 min of audio): audio
#: longer than it holds is refused before it is decoded whole (audio_tokens.audio_limit_seconds).
LONGEST_CONTEXT = 65536


def make_config(
    text: dict = R1_TEXT_SIZES,
    audio: dict = R1_AUDIO_SIZES,
    dtype: str = "bfloat16",
    max_position_embeddings: int = LONGEST_CONTEXT,
    eos_token_id: int = EOT_ID_GUESS,
) -> dict:
    """A config.json in the nested layout (the one StepFun's configs use), for the real
    sizes (``stepaudio bench``, random weights) or tiny ones (tests)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPES[0],
        "torch_dtype": dtype,
        "text_config": {
            "model_type": "qwen2",
            "architectures": ["Qwen2ForCausalLM"],
            **text,
            "max_position_embeddings": max_position_embeddings,
            "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": dtype,
            "eos_token_id": eos_token_id,
        },
        "audio_encoder_config": {**audio, "llm_dim": text["hidden_size"], "kernel_size": 3, "adapter_stride": 2},
    }


class ConfigError(ValueError):
    """config.json lacks or contradicts something the model needs; the message says what to do."""


def text_config(config: dict, where: str = "config.json") -> dict:
    """The Qwen2 text model's settings from either layout StepFun publishes: nested
    (``text_config`` + ``audio_encoder_config``) or flat (text keys at the top level).

    Raises :class:`ConfigError` naming the first missing key; nothing is defaulted.
    """
    nested = config.get("text_config")
    if nested is not None and not isinstance(nested, dict):
        raise ConfigError(f"{where}: text_config is not an object")
    source, prefix = (nested, "text_config.") if nested is not None else (config, "")
    out: dict = {}
    for key, note in TEXT_KEYS.items():
        value = source.get(key)
        if value is None and key == "num_key_value_heads":
            value = source.get(note)
        if value is None and key == "rope_theta":  # transformers 5 nests it (and writes it so)
            value = (source.get("rope_parameters") or {}).get("rope_theta")
        if value is None:
            hint = f"; {note}" if note and " " in note else ""
            raise ConfigError(f"{where}: no {prefix}{key} (needed to build the model{hint}); add it to the file")
        out[key] = value
    for key in TEXT_OPTIONAL:
        if source.get(key) is not None:
            out[key] = source[key]
    audio = config.get("audio_encoder_config")
    if not isinstance(audio, dict):
        raise ConfigError(f"{where}: no audio_encoder_config (the audio encoder's sizes)")
    if audio.get("llm_dim") not in (None, out["hidden_size"]):
        raise ConfigError(
            f"{where}: audio_encoder_config.llm_dim {audio['llm_dim']} differs from the text model's "
            f"hidden_size {out['hidden_size']}"
        )
    return out


def eos_token_ids(config: dict) -> list[int]:
    """The eos ids the checkpoint declares (text config first, then the top level)."""
    ids: list[int] = []
    for source in (config.get("text_config") or {}, config):
        value = source.get("eos_token_id")
        for i in value if isinstance(value, list) else [value]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    return ids


def looks_like_repo_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def absolute_model(model: str) -> str:
    """A local model folder as an absolute path; a repo id as it is (how engines name a model)."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model.rstrip("/")


def same_model(a: str, b: str) -> bool:
    return absolute_model(a) == absolute_model(b)


def resolve_model(name: str, *, revision: str | None = None) -> Path:
    """A local directory for ``name`` (a path, or a repo id already in the HF cache).

    Never touches the network: a repo id that is not downloaded yet is an error that says
    how to get it.
    """
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{name}: not a model directory")
        return path
    if not looks_like_repo_id(name):
        raise UserError(f"{name}: no such model directory")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        raise UserError(
            f"{name}: not downloaded yet; run `stepaudio download {name}` (or pass --model with a local path)"
        ) from None


def check_checkpoint(path: Path, *, weights: bool = True) -> dict:
    """The checkpoint's config.json, after checking it is a Step-Audio model and (unless
    ``weights`` is False: vLLM's ``--load-format dummy`` makes random ones) that its weights
    are all there and whole. Reads only the safetensors headers: well under a second."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserError(f"{path}: no config.json, not a model directory")
    try:
        config = json.loads(config_file.read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"{config_file}: unreadable config ({e})") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file}: not a model config (a JSON object is expected)")
    archs = config.get("architectures") or []
    if config.get("model_type") not in MODEL_TYPES or not set(ARCHITECTURES) & set(archs):
        raise UserError(
            f"{path}: not a Step-Audio checkpoint (model_type {config.get('model_type')!r}, "
            f"architectures {archs}); expected model_type {' or '.join(MODEL_TYPES)} and {' or '.join(ARCHITECTURES)}"
        )
    try:
        text_config(config, str(config_file))
        checkpoint_quantization(config, str(config_file))
    except ConfigError as e:
        raise UserError(str(e)) from None
    if weights:
        problems, names = read_weights(path)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(
                f"{path}: incomplete model folder: {problems[0]}{more}; "
                "`stepaudio download --check` says what to fetch, and a rerun of `stepaudio download` completes it"
            )
        missing = missing_text_layers(config, names)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(
                f"{path}: the weights have no tensor for {missing[0]}{more}: vLLM would load the model "
                "with uninitialised values there and answer nonsense (a broken conversion?)"
            )
    return config


def missing_text_layers(config: dict, names: set[str]) -> list[str]:
    """The text model's linear layers (and ``lm_head`` unless tied) with no tensor among
    ``names``. vLLM's own check of an unquantized model's weights skips its linear layers.
    Any tensor under a layer's name counts: pre-quantized forms store ``weight_packed``,
    ``weight_scale`` and the like instead of ``weight``."""
    text = text_config(config)
    n = text["num_hidden_layers"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return []  # vLLM refuses such a config with its own message
    layers = [f"model.layers.{i}.{name}" for i in range(n) for name in TEXT_LINEARS]
    if not text.get("tie_word_embeddings"):
        layers.append("lm_head")
    present = {name.rsplit(".", 1)[0] for name in names}
    return [layer for layer in layers if layer not in present]


class TokenIds:
    """Every special id the code uses, looked up in the checkpoint's tokenizer at start.

    ``<|EOT|>`` and the audio tokens must be single tokens (the model's format cannot work
    otherwise); ``</think>`` may be one special token or several plain ones (unknown for
    the real R1 tokenizer), so it is kept as a sequence. Anything missing fails here, with
    the checkpoint's name, instead of later and silently.
    """

    def __init__(self, tokenizer, where: str, config: dict | None = None) -> None:
        vocab = tokenizer.get_vocab()

        def single(token: str) -> int:
            if token not in vocab:
                raise UserError(f"{where}: the tokenizer has no {token} token; not a Step-Audio checkpoint")
            return vocab[token]

        self.eot = single(EOT)
        self.audio_start, self.audio_patch, self.audio_end = (single(t) for t in (AUDIO_START, AUDIO_PATCH, AUDIO_END))
        end = vocab.get(THINK_END)
        self.think_end = [end] if end is not None else list(tokenizer.encode(THINK_END, add_special_tokens=False))
        if not self.think_end:
            raise UserError(f"{where}: the tokenizer encodes {THINK_END} as nothing")
        self.stop = [self.eot, *(i for i in eos_token_ids(config or {}) if i != self.eot)]


def find_sequence(ids, seq) -> int:
    """Index just past the first occurrence of the token sequence ``seq`` in ``ids``, or -1."""
    n = len(seq)
    if n == 0:
        return -1
    first, seq = seq[0], list(seq)
    for i, t in enumerate(ids):
        if t == first and list(ids[i : i + n]) == seq:
            return i + n
    return -1


#: Names of one linear layer of each part of the audio tower (encoder, adapter), as a
#: checkpoint's quantization_config would name them: both must be left unquantized.
TOWER_LINEARS = ("encoder.blocks.0.attn.query", "adapter.linear1")


@dataclass(frozen=True)
class Quantization:
    """A checkpoint's own ``quantization_config`` (pre-quantized weights), as far as memory goes."""

    method: str  # quant_method: compressed-tensors, fp8, awq, gptq, ...
    label: str  # e.g. W4A16, NVFP4A16, FP8
    bits_per_weight: float  # of the LLM's linear layers, scales included (the widest group)


def _pattern_matches(pattern: str, name: str) -> bool:
    """compressed-tensors' matching of a target or ignore entry: ``re:`` regex or the exact name."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return pattern == name


def checkpoint_quantization(config: dict, where: str = "config.json") -> Quantization | None:
    """What the checkpoint's ``quantization_config`` says, or None for a bf16 checkpoint.

    Raises :class:`ConfigError` when it quantizes the audio tower: the plugin builds the
    encoder and adapter in plain torch, so they must be in the config's ``ignore`` list.
    """
    q = config.get("quantization_config")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise ConfigError(f"{where}: quantization_config is not an object")
    method = str(q.get("quant_method") or "unknown")
    if method != "compressed-tensors":
        bits = q.get("bits") or q.get("w_bit") or (8 if "fp8" in method else 16)
        return Quantization(method, method.upper() if "fp8" in method else f"{method} {bits}-bit", float(bits))
    groups = q.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        raise ConfigError(f"{where}: quantization_config has no config_groups")
    ignore = [str(i) for i in q.get("ignore") or []]
    widest, label = 0.0, ""
    for name, group in groups.items():
        weights = group.get("weights") if isinstance(group, dict) else None
        if not isinstance(weights, dict) or not isinstance(weights.get("num_bits"), int):
            raise ConfigError(f"{where}: quantization_config.config_groups.{name} has no weights.num_bits")
        targets = [str(t) for t in group.get("targets") or []]
        for layer in TOWER_LINEARS:
            quantized = any(t == "Linear" or _pattern_matches(t, layer) for t in targets)
            if quantized and not any(_pattern_matches(i, layer) for i in ignore):
                raise ConfigError(
                    f"{where}: quantization_config quantizes the audio tower ({layer.split('.')[0]}.*), which "
                    "runs unquantized; its ignore list must hold 're:encoder.*' and 're:adapter.*'"
                )
        bits, size = weights["num_bits"], weights.get("group_size")
        is_float = weights.get("type") == "float"
        scale_bits = 8 if is_float else 16  # FP8/E8M0 scales for float formats, bf16 for integers
        per_weight = bits + (scale_bits / size if isinstance(size, int) and size > 0 else 0.0)
        if per_weight > widest:
            acts = group.get("input_activations")
            a_bits = acts.get("num_bits") if isinstance(acts, dict) else None
            if is_float and bits == 4:
                kind = "NVFP4" if size == 16 else "MXFP4"
            elif is_float:
                kind = "MXFP8" if size == 32 else "FP8"
            else:
                kind = f"W{bits}"
            if kind.startswith("W"):
                label = f"{kind}A{a_bits or 16}"
            else:
                label = kind if a_bits else f"{kind}A16"
            widest = per_weight
    return Quantization(method, label, widest)


def weight_bytes(
    text: dict, quantization: str | Quantization | None = None, *, per_token: bool = False, audio: dict = R1_AUDIO_SIZES
) -> int:
    """Bytes of weights: all of them (what must fit), or with ``per_token`` those one decode
    step reads (every linear layer and the LM head; the embedding lookup reads one row, the
    audio tower does not run). vLLM's online FP8 (``"fp8"``) stores the LLM's linear layers
    in one byte; a pre-quantized checkpoint (:class:`Quantization`) in its own width. The
    embeddings, the LM head and the plain-torch audio tower stay bf16 either way."""
    h, inter, layers = text["hidden_size"], text["intermediate_size"], text["num_hidden_layers"]
    kv = text["num_key_value_heads"] * (h // text["num_attention_heads"])
    if isinstance(quantization, Quantization):
        bytes_per_weight = quantization.bits_per_weight / 8
    else:
        bytes_per_weight = 1 if quantization == "fp8" else 2
    linear = int(layers * (2 * h * h + 2 * h * kv + 3 * h * inter) * bytes_per_weight)
    head = text["vocab_size"] * h * 2
    if per_token:
        return linear + head
    d = audio["n_audio_state"]
    tower = audio["n_audio_layer"] * 12 * d * d + 2 * (3 * d * d + d * 2048 + 2048 * h)
    return linear + 2 * head + tower
