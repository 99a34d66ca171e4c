"""Audio input: decode anything, resample to 16 kHz mono float32, chunk, count tokens.

Decoding goes through libsndfile (wav, flac, ogg, mp3, ...) first and falls back to
ffmpeg through pydub for containers libsndfile cannot read (m4a, aac, webm, mp4 video).
Every failure is an :class:`AudioError` whose message starts with the file's name.

Size: files are decoded from disk as they are read (libsndfile), never more audio than a
context can hold (``audio_limit_seconds``): longer audio is refused from the header before it
is read, or as soon as the limit is passed. Formats only ffmpeg reads are handed to it whole,
up to ``MAX_FFMPEG_INPUT_BYTES``, and it stops decoding past the limit.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stepaudio_cli.errors import AudioError, UserError

SAMPLE_RATE = 16_000
HOP_LENGTH = 160
N_FFT = 400
MEL_PADDING = 479
# The encoder has learned positions for 1500 frames (30 s); the official client uses 25 s.
CHUNK_SECONDS = 25
CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE
STDIN_NAME = "<stdin>"
# The longest recording decoded (answered in windows; 16 kHz float32: 0.9 GiB). Longer ones are
# refused from the header, before they are read.
MAX_RECORDING_SECONDS = 4 * 3600
# Containers libsndfile cannot read are handed to ffmpeg in one piece: a bound on what is read.
MAX_FFMPEG_INPUT_BYTES = 1 << 30

# Extensions offered to directory scans (batch). Decoding itself never trusts the suffix.
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .m4a .aac .mp4 .m4b .webm .mka .mkv .wma .aif .aiff .au .caf".split()
)


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


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono float32 at 16 kHz."""

    name: str
    samples: np.ndarray = field(repr=False)
    source_rate: int = SAMPLE_RATE
    source_channels: int = 1

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def chunks(self) -> list[np.ndarray]:
        return split_chunks(self.samples)

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens_for_samples(len(self.samples))


@dataclass(frozen=True)
class AudioLength:
    """How long an audio file is, from its header, before it is decoded: what
    ``request.generation_room`` needs to refuse it early."""

    name: str
    n_samples: int  # at 16 kHz
    source_samples: int = 0  # frames x channels as stored: read as float32 before resampling

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    @property
    def decode_bytes(self) -> int:
        """Memory decoding it takes at its peak: the source as float32, and the result."""
        return 4 * (self.source_samples + self.n_samples)

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens_for_samples(self.n_samples)


def header_length(path: str | os.PathLike, name: str) -> AudioLength | None:
    """The length a file's header states (formats libsndfile reads); None when it cannot say."""
    import soundfile as sf

    try:
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return None
    if info.samplerate <= 0 or info.frames < 0:
        return None
    return AudioLength(name, round(info.frames * SAMPLE_RATE / info.samplerate), info.frames * info.channels)


def wav_bytes(samples: np.ndarray) -> bytes:
    """16-bit PCM WAV at 16 kHz, the most widely decodable payload for servers."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(samples, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_stdin(stdin=None) -> bytes:
    import sys

    stream = stdin if stdin is not None else sys.stdin.buffer
    data = stream.read()
    if not data:
        raise AudioError(f"{STDIN_NAME}: no data on standard input")
    return data


def load_audio(source: str, *, stdin=None, context_tokens: int | None = None) -> Audio:
    """Load a file path or ``-`` (stdin) into :class:`Audio`."""
    if source == "-":
        return decode_bytes(read_stdin(stdin), STDIN_NAME, context_tokens)
    return load_file(source, source, context_tokens)


def load_file(path: str | os.PathLike, name: str, context_tokens: int | None = None) -> Audio:
    """Decode the file at ``path`` (named ``name`` in messages) as it is read from disk: never
    more audio than ``context_tokens`` hold (see ``audio_limit_seconds``)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{name}: no such file")
    if path.is_dir():
        raise AudioError(f"{name}: is a directory (use `stepaudio batch` for folders)")
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):  # a pipe (<(...), /dev/stdin): read what it sends
                return decode_bytes(f.read(), name, context_tokens)
            if info.st_size == 0:
                raise AudioError(f"{name}: file is empty")
            return _decode(f, info.st_size, name, context_tokens)
    except OSError as e:
        raise AudioError(f"{name}: cannot read file ({e.strerror or e})") from None


def decode_bytes(data: bytes, name: str, context_tokens: int | None = None) -> Audio:
    """Decode an in-memory audio file of any supported format (the same decoding as files,
    so a bad file gets the same message in `ask` and `batch`)."""
    if not data:
        raise AudioError(f"{name}: file is empty")
    return _decode(io.BytesIO(data), len(data), name, context_tokens)


def _decode(f, size: int, name: str, context_tokens: int | None) -> Audio:
    limit = audio_limit_seconds(context_tokens)
    try:
        samples, rate, channels = _decode_soundfile(f, name, limit, context_tokens)
    except _NotSoundfile as first:
        if size > MAX_FFMPEG_INPUT_BYTES:
            raise AudioError(
                f"{name}: {size / 2**30:.1f} GiB in a format only ffmpeg reads (at most "
                f"{MAX_FFMPEG_INPUT_BYTES / 2**30:.0f} GiB): extract the audio first, e.g. ffmpeg -i IN -vn OUT.flac"
            ) from None
        f.seek(0)
        samples, rate, channels = _decode_ffmpeg(f.read(), name, first.reason, limit, context_tokens)
    if samples.size == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name}: contains invalid (NaN or infinite) samples")
    mono = _downmix(samples)
    return Audio(name=name, samples=resample(mono, rate), source_rate=rate, source_channels=channels)


def _too_long(name: str, seconds: float | None, context_tokens: int | None) -> AudioError:
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


def _downmix(samples: np.ndarray) -> np.ndarray:
    """Average the channels. A matrix-vector product: ``mean(axis=1)`` on interleaved frames
    is a strided reduction, ~20x slower, and batch decodes on the engine's CPU budget."""
    if samples.ndim == 1:
        return np.ascontiguousarray(samples, dtype=np.float32)
    weights = np.full(samples.shape[1], 1.0 / samples.shape[1], dtype=np.float32)
    return np.ascontiguousarray(samples.astype(np.float32, copy=False) @ weights)


def resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


class _NotSoundfile(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _decode_soundfile(f, name: str, limit: float, context_tokens: int | None) -> tuple[np.ndarray, int, int]:
    import soundfile as sf

    errors = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
    try:
        sound = sf.SoundFile(f)
    except errors as e:
        raise _NotSoundfile(_short(str(e))) from None
    with sound:
        rate, channels = int(sound.samplerate), int(sound.channels)
        most = int(limit * rate) + 1  # one frame past the limit tells that there is more
        if sound.frames >= most:  # the header says so: refused before anything is read
            raise _too_long(name, sound.frames / rate, context_tokens)
        try:
            samples = sound.read(frames=most, dtype="float32", always_2d=True)
        except errors as e:
            raise _NotSoundfile(_short(str(e))) from None
    if len(samples) >= most:
        raise _too_long(name, None, context_tokens)
    return samples, rate, channels


def _decode_ffmpeg(
    data: bytes, name: str, first_reason: str, limit: float, context_tokens: int | None
) -> tuple[np.ndarray, int, int]:
    if shutil.which("ffmpeg") is None:
        raise AudioError(
            f"{name}: not a format libsndfile reads ({first_reason}); install ffmpeg to decode m4a/aac/webm/mp4"
        )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydub import AudioSegment
        from pydub.exceptions import CouldntDecodeError

    try:  # ffmpeg stops a second past the limit
        seg = AudioSegment.from_file(io.BytesIO(data), duration=limit + 1)
    except IndexError:  # pydub indexes the audio streams ffprobe found: there were none
        raise AudioError(f"{name}: no audio stream (a video or container without sound)") from None
    except (CouldntDecodeError, OSError, ValueError) as e:
        raise AudioError(f"{name}: not a readable audio file ({_ffmpeg_reason(e)})") from None
    if seg.frame_count() == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if seg.duration_seconds > limit:
        raise _too_long(name, None, context_tokens)
    channels = seg.channels
    raw = np.array(seg.get_array_of_samples())
    scale = float(1 << (8 * seg.sample_width - 1))
    samples = (raw.astype(np.float32) / scale).reshape(-1, channels)
    return samples, int(seg.frame_rate), int(channels)


def _ffmpeg_reason(e: Exception) -> str:
    text = str(e)
    # ffmpeg prints a banner then the real problem on one of the last lines.
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    interesting = [ln for ln in lines if "Invalid data" in ln or "rror" in ln or "not" in ln.lower()]
    line = (interesting or lines or ["ffmpeg could not decode it"])[-1]
    # ffmpeg names its input first: the pipe the bytes came through ("cache:pipe:0: "), not the file.
    return _short(re.sub(r"^(?:(?:cache|pipe|file):)*(?:pipe:)?\d*:\s*", "", line) or line)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


_NUMBER = r"(\d+(?:\.\d+)?)"
#: Units in the order they are written (1d2h30m, 1h30m, 90s, 90, 500ms): a bare number is seconds.
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m(?!s)", 60.0), ("s?", 1.0), ("ms", 0.001))
_DURATION = re.compile("".join(rf"(?:{_NUMBER}(?![\d.])\s*{unit}\s*)?" for unit, _ in _UNITS))


def parse_duration(text: str | float, flag: str, examples: str) -> float:
    """Seconds in ``90``, ``90s``, ``20m``, ``1h30m``, ``1.5h``, ``2d``, ``500ms``, ``1:30`` or
    ``1:30:00`` (a leading ``-``: negative); else one error line naming ``flag`` and ``examples``."""
    t = str(text).strip().lower()
    sign, body = (-1.0, t[1:].strip()) if t.startswith("-") else (1.0, t)
    if ":" in body:
        parts = body.split(":")
        if len(parts) <= 3 and all(re.fullmatch(_NUMBER, p) for p in parts):
            return sign * sum(float(p) * 60**i for i, p in enumerate(reversed(parts)))
    elif (m := _DURATION.fullmatch(body)) and any(m.groups()):
        return sign * sum(float(g) * scale for g, (_, scale) in zip(m.groups(), _UNITS) if g)
    raise UserError(f"{flag} {text!r}: not a duration (e.g. {examples})")
