"""Audio decoding, resampling, chunking and token counts on generated files."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import soundfile as sf
from conftest import ffmpeg, noise, tone, write_wav

from stepaudio_cli.audio import decode_bytes, load_audio
from stepaudio_cli.audio_tokens import CHUNK_SAMPLES, SAMPLE_RATE, chunk_tokens, prompt_tokens_for_chunks, split_chunks
from stepaudio_cli.errors import AudioError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def peak_hz(samples: np.ndarray, sr: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize(
    ("sr", "channels", "subtype", "fmt", "suffix"),
    [
        (16000, 1, "PCM_16", "WAV", "wav"),
        (44100, 2, "PCM_24", "WAV", "wav"),
        (48000, 6, "FLOAT", "WAV", "wav"),
        (8000, 1, "PCM_U8", "WAV", "wav"),
        (22050, 2, "PCM_16", "FLAC", "flac"),
        (32000, 1, "VORBIS", "OGG", "ogg"),
    ],
)
def test_soundfile_formats_become_mono_16k_float32(tmp_path, sr, channels, subtype, fmt, suffix):
    path = write_wav(tmp_path / f"a.{suffix}", tone(2.0, sr=sr, channels=channels), sr=sr, subtype=subtype, format=fmt)
    audio = load_audio(str(path))
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert audio.source_rate == sr and audio.source_channels == channels
    assert audio.duration == pytest.approx(2.0, abs=0.01)
    # A proper resampler keeps the pitch and the level.
    assert peak_hz(audio.samples) == pytest.approx(440, abs=2)
    assert np.abs(audio.samples).max() == pytest.approx(0.3, abs=0.03)


def test_stereo_channels_are_averaged(tmp_path):
    left = tone(1.0, freq=440)
    right = tone(1.0, freq=1000)
    path = write_wav(tmp_path / "lr.wav", np.stack([left, right], 1), subtype="FLOAT")
    audio = load_audio(str(path))
    np.testing.assert_allclose(audio.samples, (left + right) / 2, atol=1e-6)


@needs_ffmpeg
@pytest.mark.parametrize("suffix", ["mp3", "m4a", "webm"])
def test_ffmpeg_formats(tmp_path, suffix):
    src = write_wav(tmp_path / "src.wav", tone(2.0, sr=44100, channels=2), sr=44100)
    dst = tmp_path / f"clip.{suffix}"
    ffmpeg("-i", str(src), str(dst))
    audio = load_audio(str(dst))
    assert audio.duration == pytest.approx(2.0, abs=0.1)
    assert peak_hz(audio.samples) == pytest.approx(440, abs=3)


@needs_ffmpeg
def test_video_with_audio_track(tmp_path):
    src = write_wav(tmp_path / "src.wav", tone(2.0, sr=48000), sr=48000)
    video = tmp_path / "talk.mp4"
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=black:s=64x64:d=2",
        "-i",
        str(src),
        "-shortest",
        "-c:v",
        "libx264",
        "-c:a",
        "aac",
        str(video),
    )
    audio = load_audio(str(video))
    assert audio.duration == pytest.approx(2.0, abs=0.15)
    assert peak_hz(audio.samples) == pytest.approx(440, abs=3)


def test_stdin_bytes(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(1.5, sr=22050), 22050, format="WAV")
    buf.seek(0)
    audio = load_audio("-", stdin=buf)
    assert audio.name == "<stdin>"
    assert audio.duration == pytest.approx(1.5, abs=0.01)


def test_silence_is_fine(tmp_path):
    audio = load_audio(str(write_wav(tmp_path / "quiet.wav", np.zeros(16000, np.float32))))
    assert audio.duration == 1.0 and not audio.samples.any()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b""), "file is empty"),
        (lambda p: p.write_text("this is not audio at all\n" * 20), "not"),
        (lambda p: p.write_bytes(_wav_bytes()[:30]), "not"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(_wav_bytes(n=0)), "no audio samples"),
    ],
    ids=["missing", "empty", "text", "truncated-header", "directory", "zero-samples"],
)
def test_bad_input_names_the_file(tmp_path, make, expected):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError) as err:
        load_audio(str(path))
    message = err.value.message
    assert message.startswith(str(path) + ":")
    assert expected in message
    assert "\n" not in message
    assert "pipe:" not in message  # ffmpeg's name for its input is not the user's file


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")
def test_ffmpeg_s_pipe_name_stays_out_of_the_message(tmp_path):
    path = tmp_path / "garbage.m4a"
    path.write_bytes(b"garbage, not audio at all" * 4)
    with pytest.raises(AudioError) as err:
        load_audio(str(path))
    assert err.value.message.startswith(f"{path}: not a readable audio file (")
    assert "pipe:" not in err.value.message and "cache:" not in err.value.message


def test_empty_stdin():
    with pytest.raises(AudioError, match="^<stdin>: no data"):
        load_audio("-", stdin=io.BytesIO(b""))


def _wav_bytes(n: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize(("seconds", "tokens"), [(10, 125), (25, 313), (1, 13), (0.08, 1), (5, 63)])
def test_chunk_token_formula(seconds, tokens):
    n = int(seconds * SAMPLE_RATE)
    t = (n + 479) // 160
    e = (t + 1) // 2 // 2
    assert chunk_tokens(n) == (e - 1) // 2 + 1 == tokens


def test_chunks_stay_under_30s_and_cover_everything():
    samples = noise(61.0)
    chunks = split_chunks(samples)
    assert [len(c) for c in chunks] == [CHUNK_SAMPLES, CHUNK_SAMPLES, len(samples) - 2 * CHUNK_SAMPLES]
    np.testing.assert_array_equal(np.concatenate(chunks), samples)
    assert prompt_tokens_for_chunks([len(c) for c in chunks]) == 2 * (313 + 2) + chunk_tokens(11 * SAMPLE_RATE) + 2


def test_decode_rejects_nan(tmp_path):
    data = tone(0.5)
    data[100] = np.nan
    buf = io.BytesIO()
    sf.write(buf, data, 16000, format="WAV", subtype="FLOAT")
    with pytest.raises(AudioError, match="^x.wav: contains invalid"):
        decode_bytes(buf.getvalue(), "x.wav")


def test_video_without_sound_says_so(tmp_path):
    video = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x64:rate=5", "-an", str(video))
    with pytest.raises(AudioError) as err:
        load_audio(str(video))
    assert err.value.message == f"{video}: no audio stream (a video or container without sound)"


def test_ask_and_batch_give_the_same_message_for_an_empty_file(tmp_path):
    """One decoding path: the message does not depend on the command."""
    from stepaudio_cli.audio import decode_bytes

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError) as from_file:
        load_audio(str(empty))
    with pytest.raises(AudioError) as from_bytes:  # what batch calls on the bytes it read and hashed
        decode_bytes(empty.read_bytes(), str(empty))
    assert from_file.value.message == from_bytes.value.message == f"{empty}: file is empty"


# --- audio shorter than its header says; lengths before decoding ---------------------------------


def _cut(path, keep: float):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("fmt, suffix", [("WAV", "wav"), ("FLAC", "flac")])
def test_audio_cut_short_is_decoded_as_far_as_it_goes_with_a_warning(tmp_path, fmt, suffix):
    from stepaudio_cli.audio import load_file

    whole = write_wav(tmp_path / f"whole.{suffix}", noise(10.0), format=fmt)
    assert load_file(whole, "whole").warnings == ()
    cut = _cut(write_wav(tmp_path / f"cut.{suffix}", noise(10.0), format=fmt), 0.5)
    audio = load_file(cut, "cut")
    assert 3.0 < audio.duration < 6.0
    (warning,) = audio.warnings
    assert (
        warning.startswith("cut: truncated: its header says 10.0s of audio, it holds ")
        and "as far as it goes" in warning
    )


@needs_ffmpeg
def test_a_container_s_length_is_known_before_decoding(tmp_path, monkeypatch):
    """The memory a decode takes comes from the stream's duration (container metadata), not
    the file's size: an hour of Opus is 2 MB on disk and ~0.7 GB while ffmpeg decodes it."""
    import stepaudio_cli.audio as audio
    import stepaudio_cli.audio_length as audio_length

    path = tmp_path / "a.mka"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:duration=30:sample_rate=48000", "-ac", "2", "-c:a", "libopus",
           str(path))  # fmt: skip
    for probe in ("av", "ffprobe"):
        if probe == "ffprobe":
            monkeypatch.setattr(audio_length, "_probe_av", lambda p: None)
        length = audio.header_length(path, "a.mka")
        assert length.duration == pytest.approx(30.0, abs=0.1)
        assert length.source_samples == pytest.approx(30 * 48000 * 2, rel=0.01)
        assert length.decode_bytes >= 12 * length.source_samples > 20 * path.stat().st_size
    long = audio_length.AudioLength("x", 5 * 3600 * SAMPLE_RATE)
    with pytest.raises(AudioError, match="x: 5h00m of audio is more than the 4h00m"):
        audio_length.check_length(long, None)


def test_durations_out_of_range_are_refused():
    from stepaudio_cli.durations import parse_duration
    from stepaudio_cli.errors import UserError

    for text in ("9" * 400, "1e999", "99999999999h"):
        with pytest.raises(UserError, match="--window"):
            parse_duration(text, "--window", "20m")
    assert parse_duration("20m", "--window", "20m") == 1200
