"""What audio costs the model: the front end's rates (16 kHz, hop, padding), the frames through
log-mel -> encoder -> adapter, the 25 s chunks, the prompt tokens of a recording, and the longest
audio a context holds. These match StepFun's serving code (their vLLM fork) exactly: the plugin's
front end and tower and every token count of ours read them here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_FFT = 400
MEL_PADDING = 479
# The encoder has learned positions for 1500 frames (30 s); the official client uses 25 s.
CHUNK_SECONDS = 25
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
# The longest recording decoded (answered in windows; 16 kHz float32: 0.9 GiB). Longer ones are
# refused from the header, before they are read.
MAX_RECORDING_SECONDS = 4 * 3600


def mel_frames(n_samples: int) -> int:
    """Number of log-mel frames the front end produces for ``n_samples`` at 16 kHz."""
    return (n_samples + MEL_PADDING) // HOP_LENGTH


def encoder_frames(n_mel_frames: int) -> int:
    """Frames after the encoder's stride-2 conv and 2x average pool (25 Hz)."""
    return (n_mel_frames + 1) // 2 // 2


def adapter_frames(n_encoder_frames: int) -> int:
    """Frames after the adapter's Conv1d(k=3, s=2, p=1) (12.5 Hz)."""
    return (n_encoder_frames - 1) // 2 + 1


def chunk_tokens(n_samples: int) -> int:
    """``<audio_patch>`` embeddings the model produces for one chunk (10 s -> 125)."""
    return adapter_frames(encoder_frames(mel_frames(n_samples)))


def split_chunks(samples: np.ndarray, chunk_samples: int = CHUNK_SAMPLES) -> list[np.ndarray]:
    """Consecutive chunks of at most ``chunk_samples``; an empty input gives one empty chunk."""
    if len(samples) == 0:
        return [samples]
    return [samples[i : i + chunk_samples] for i in range(0, len(samples), chunk_samples)]


def item_embeddings(n_samples: int) -> int:
    """``<audio_patch>`` embeddings of one audio item of ``n_samples`` (all its chunks)."""
    full, rest = divmod(n_samples, CHUNK_SAMPLES)
    return full * chunk_tokens(CHUNK_SAMPLES) + (chunk_tokens(rest) if rest else 0)


def max_audio_samples(context_tokens: int) -> int:
    """The longest audio (whole chunks, at least one) whose prompt tokens fit ``context_tokens``."""
    per_chunk = chunk_tokens(CHUNK_SAMPLES) + 2
    return max(context_tokens // per_chunk, 1) * CHUNK_SAMPLES


def audio_limit_seconds(context_tokens: int | None = None) -> float:
    """The most audio worth decoding for one request in a context of ``context_tokens``; None:
    for a recording answered in windows (``MAX_RECORDING_SECONDS``)."""
    if context_tokens is None:
        return MAX_RECORDING_SECONDS
    return max_audio_samples(context_tokens) / SAMPLE_RATE


def prompt_tokens_for_chunks(chunk_lengths: list[int]) -> int:
    """Prompt tokens for audio: ``<audio_start>`` + N x ``<audio_patch>`` + ``<audio_end>`` per chunk."""
    return sum(chunk_tokens(n) + 2 for n in chunk_lengths)


def prompt_tokens_for_samples(n_samples: int) -> int:
    """Prompt tokens for ``n_samples`` of audio at 16 kHz, cut in chunks as ``split_chunks`` does."""
    full, rest = divmod(n_samples, CHUNK_SAMPLES)
    return prompt_tokens_for_chunks([CHUNK_SAMPLES] * full + ([rest] if rest or not full else []))
