"""Audio input: decode anything, resample to 16 kHz mono float32 (what it costs in tokens:
``audio_tokens``; its length before decoding: ``audio_length``).

Decoding goes through libsndfile (wav, flac, ogg, mp3, ...) first and falls back to
ffmpeg through pydub for containers libsndfile cannot read (m4a, aac, webm, mp4 video).
Every failure is an :class:`AudioError` whose message starts with the file's name.

Size: files are decoded from disk as they are read (libsndfile), never more audio than a
context can hold (``audio_limit_seconds``): longer audio is refused from the header before it
is read, or as soon as the limit is passed. Formats only ffmpeg reads are handed to it whole,
up to ``MAX_FFMPEG_INPUT_BYTES``, and it stops decoding past the limit. ``header_length`` says
how long a file is before it is decoded: from its header (libsndfile), else from its container
(PyAV, or ffprobe), so memory for decoding it is reserved from its length, not its size.

Audio that holds less than its header says (a file cut short) is decoded as far as it goes,
with a warning in ``Audio.warnings``. What libmpg123 prints about damaged MP3 frames goes to
/dev/null, never to the terminal.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stepaudio_cli.audio_length import AudioLength, container_length, too_long
from stepaudio_cli.audio_tokens import SAMPLE_RATE, audio_limit_seconds, prompt_tokens_for_samples, split_chunks
from stepaudio_cli.durations import format_duration
from stepaudio_cli.errors import AudioError

STDIN_NAME = "<stdin>"
# Containers libsndfile cannot read are handed to ffmpeg in one piece: a bound on what is read.
MAX_FFMPEG_INPUT_BYTES = 1 << 30
# Extensions offered to directory scans (batch). Decoding itself never trusts the suffix.
AUDIO_EXTENSIONS = frozenset(
    ".wav .wave .flac .ogg .oga .opus .mp3 .m4a .aac .mp4 .m4b .webm .mka .mkv .wma .aif .aiff .au .caf".split()
)


@dataclass(frozen=True)
class Audio:
    """Decoded audio: mono float32 at 16 kHz."""

    name: str
    samples: np.ndarray = field(repr=False)
    source_rate: int = SAMPLE_RATE
    source_channels: int = 1
    #: What the answer should be read with (the file holds less audio than its header says).
    warnings: tuple[str, ...] = ()

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def chunks(self) -> list[np.ndarray]:
        return split_chunks(self.samples)

    @property
    def prompt_tokens(self) -> int:
        return prompt_tokens_for_samples(len(self.samples))


def header_length(path: str | os.PathLike, name: str) -> AudioLength | None:
    """The length a file states before it is decoded: its header (formats libsndfile reads),
    else its container's metadata (PyAV or ffprobe: m4a, opus, webm...); None when neither says."""
    import soundfile as sf

    try:
        with _quiet_decoder(path):
            info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError):
        return container_length(path, name)
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
    warnings: tuple[str, ...] = ()
    try:
        samples, rate, channels, warnings = _decode_soundfile(f, name, limit, context_tokens)
    except _NotSoundfile as first:
        if size > MAX_FFMPEG_INPUT_BYTES:
            raise AudioError(
                f"{name}: {size / 2**30:.1f} GiB in a format only ffmpeg reads (at most "
                f"{MAX_FFMPEG_INPUT_BYTES / 2**30:.0f} GiB): extract the audio first, e.g. ffmpeg -i IN -vn OUT.flac"
            ) from None
        f.seek(0)
        samples, rate, channels = _decode_ffmpeg(f.read(), name, first.reason, limit, context_tokens)
        warnings = _short_of(name, first.stated_seconds * rate, len(samples), rate)
    if samples.size == 0:
        raise AudioError(f"{name}: contains no audio samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name}: contains invalid (NaN or infinite) samples")
    mono = _downmix(samples)
    del samples
    return Audio(name=name, samples=resample(mono, rate), source_rate=rate, source_channels=channels, warnings=warnings)


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
    """libsndfile cannot read it (``stated_seconds``: the length its header stated, if it got that far)."""

    def __init__(self, reason: str, stated_seconds: float = 0.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stated_seconds = stated_seconds


def _decode_soundfile(
    f, name: str, limit: float, context_tokens: int | None
) -> tuple[np.ndarray, int, int, tuple[str, ...]]:
    import soundfile as sf

    errors = (sf.LibsndfileError, RuntimeError, TypeError, ValueError)
    with _quiet_decoder(f):
        try:
            sound = sf.SoundFile(f)
        except errors as e:
            raise _NotSoundfile(_short(str(e))) from None
        with sound:
            rate, channels = int(sound.samplerate), int(sound.channels)
            most = int(limit * rate) + 1  # one frame past the limit tells that there is more
            if sound.frames >= most:  # the header says so: refused before anything is read
                raise too_long(name, sound.frames / rate, context_tokens)
            try:
                samples = sound.read(frames=most, dtype="float32", always_2d=True)
            except errors as e:  # a damaged stream (a FLAC cut short): ffmpeg reads what is there
                raise _NotSoundfile(_short(str(e)), sound.frames / rate) from None
            stated = sound.frames
    if len(samples) >= most:
        raise too_long(name, None, context_tokens)
    stated = max(stated, _riff_frames(f, len(samples)))
    return samples, rate, channels, _short_of(name, stated, len(samples), rate)


def _short_of(name: str, stated: float, held: int, rate: int) -> tuple[str, ...]:
    """The warning for audio of ``held`` frames whose header stated ``stated`` (more than 10 ms more)."""
    if not held or stated <= held + rate // 100:
        return ()
    return (
        f"{name}: truncated: its header says {format_duration(stated / rate)} of audio, it holds "
        f"{format_duration(held / rate)}; answered as far as it goes",
    )


def _riff_frames(f, frames_read: int) -> int:
    """Frames a WAV's ``data`` chunk states, when it states more bytes than the file holds
    (libsndfile quietly counts what is there); 0 when not a WAV or not short."""
    try:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(0)
        if f.read(12)[8:12] != b"WAVE":
            return 0
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = f.read(4), int.from_bytes(f.read(4), "little")
            if chunk == b"data":
                held = size - pos - 8
                if length in (0, 0xFFFFFFFF) or length <= held or held <= 0:
                    return 0
                return frames_read * length // held
            pos += 8 + length + (length & 1)
    except (OSError, ValueError):
        pass
    return 0


_QUIET = threading.Lock()
_QUIET_USERS = 0
_SAVED_STDERR: int | None = None


@contextlib.contextmanager
def _quiet_decoder(source):
    """Keep libmpg123's notes about damaged frames ("Note: Illegal Audio-MPEG-Header ...",
    written to file descriptor 2 from C) off the terminal while an MP3 is read: descriptor 2
    points at /dev/null meanwhile. The Terminal writes through its own copy of it; other files
    are read with descriptor 2 as it is."""
    global _QUIET_USERS, _SAVED_STDERR
    if not _looks_mpeg(source):
        yield
        return
    with _QUIET:
        if _QUIET_USERS == 0:
            try:
                _SAVED_STDERR = os.dup(2)
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 2)
                os.close(null)
            except OSError:
                _SAVED_STDERR = None
        _QUIET_USERS += 1
    try:
        yield
    finally:
        with _QUIET:
            _QUIET_USERS -= 1
            if _QUIET_USERS == 0 and _SAVED_STDERR is not None:
                with contextlib.suppress(OSError):
                    os.dup2(_SAVED_STDERR, 2)
                os.close(_SAVED_STDERR)
                _SAVED_STDERR = None


def _looks_mpeg(source) -> bool:
    """An MP3 by its first bytes (an ID3 tag or an MPEG frame sync), or its name."""
    try:
        if isinstance(source, (str, os.PathLike)):
            if os.fspath(source).lower().endswith((".mp3", ".mp2", ".mpga")):
                return True
            with open(source, "rb") as f:
                head = f.read(3)
        else:
            at = source.tell()
            head = source.read(3)
            source.seek(at)
    except (OSError, ValueError, AttributeError):
        return False
    return head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


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
        raise too_long(name, None, context_tokens)
    channels, width, rate = seg.channels, seg.sample_width, int(seg.frame_rate)
    raw = np.frombuffer(seg.raw_data, dtype={1: np.int8, 2: np.int16, 4: np.int32}[width])
    del seg
    samples = raw.astype(np.float32)  # scaled in place: one float copy, not two
    del raw
    samples *= 1.0 / float(1 << (8 * width - 1))
    return samples.reshape(-1, channels), rate, int(channels)


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
