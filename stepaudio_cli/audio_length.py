"""How long an audio file is before it is decoded (``AudioLength``: from a header, or from a
container's metadata through PyAV or ffprobe), and refusing audio longer than a context holds, or
than a recording answered in windows may be, with the message decoding would give.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass

from stepaudio_cli.audio_tokens import SAMPLE_RATE, audio_limit_seconds, prompt_tokens_for_samples
from stepaudio_cli.durations import format_duration
from stepaudio_cli.errors import AudioError

# Bytes the ffmpeg path holds at its peak per source sample (frames x channels): its 16-bit
# output, pydub's copies, the float32 conversion (measured: an hour of 48 kHz stereo Opus).
FFMPEG_BYTES_PER_SAMPLE = 12


@dataclass(frozen=True)
class AudioLength:
    """How long an audio file is, from its header, before it is decoded: what
    ``request.generation_room`` needs to refuse it early."""

    name: str
    n_samples: int  # at 16 kHz
    source_samples: int = 0  # frames x channels as stored: read as float32 before resampling
    bytes_per_source_sample: int = 4  # at the decoder's peak (libsndfile: float32)

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    @property
    def decode_bytes(self) -> int:
        """Memory decoding it takes at its peak: the source as the decoder holds it, and the result."""
        return self.bytes_per_source_sample * self.source_samples + 4 * self.n_samples

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens_for_samples(self.n_samples)


def container_length(path: str | os.PathLike, name: str) -> AudioLength | None:
    """Duration, rate and channels of the first audio stream, from the container."""
    found = _probe_av(path) or _probe_ffprobe(path)
    if found is None:
        return None
    seconds, rate, channels = found
    if not (math.isfinite(seconds) and seconds >= 0 and rate > 0 and channels > 0):
        return None
    frames = round(seconds * rate)
    return AudioLength(name, round(seconds * SAMPLE_RATE), frames * channels, FFMPEG_BYTES_PER_SAMPLE)


def _probe_av(path) -> tuple[float, int, int] | None:
    try:
        import av
    except ImportError:
        return None
    try:
        with av.open(os.fspath(path)) as container:
            stream = container.streams.audio[0]
            ctx = stream.codec_context
            if stream.duration is not None and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                seconds = container.duration / av.time_base
            else:
                return None
            return seconds, int(ctx.sample_rate or 0), int(ctx.channels or 0)
    except Exception:  # noqa: BLE001 - whatever PyAV raises for a file it cannot read: no length
        return None


def _probe_ffprobe(path) -> tuple[float, int, int] | None:
    if shutil.which("ffprobe") is None:
        return None
    command = [
        "ffprobe", "-v", "error", "-select_streams", "a:0", "-of", "json",
        "-show_entries", "stream=sample_rate,channels,duration:format=duration", os.fspath(path),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, timeout=30, check=False)
        info = json.loads(done.stdout)
        stream = info["streams"][0]
        seconds = float(stream.get("duration") or info["format"]["duration"])
        return seconds, int(stream["sample_rate"]), int(stream["channels"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError, TypeError):
        return None


def check_length(length: AudioLength, context_tokens: int | None) -> None:
    """Refuse, from the length a file states, audio longer than ``context_tokens`` hold (or,
    None, than a recording answered in windows may be): the message decoding would give."""
    limit = audio_limit_seconds(context_tokens)
    if length.n_samples > limit * SAMPLE_RATE:
        raise too_long(length.name, length.duration, context_tokens)


def too_long(name: str, seconds: float | None, context_tokens: int | None) -> AudioError:
    limit = audio_limit_seconds(context_tokens)
    length = f"{format_duration(seconds)} of audio" if seconds else f"over {format_duration(limit)} of audio"
    if context_tokens:
        return AudioError(
            f"{name}: {length} does not fit max model length {context_tokens} (about {format_duration(limit)} "
            "at most); use shorter audio or raise --max-model-len"
        )
    return AudioError(
        f"{name}: {length} is more than the {format_duration(limit)} stepaudio answers in windows "
        f"({limit * SAMPLE_RATE * 4 / 2**30:.1f} GiB decoded); split it into parts under {format_duration(limit)}"
    )
