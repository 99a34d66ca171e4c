"""Audio from URLs (url_audio.py) against real HTTP servers on 127.0.0.1: a direct file, redirects,
404, a silent server, huge bodies, pages, wrong content types, a body cut short, revalidation; then
`ask` and `batch` with URLs against a scripted model server (no vLLM: fast)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, reply_json, reply_stream, tone
from typer.testing import CliRunner

from stepaudio_cli import url_audio
from stepaudio_cli.cli import app
from stepaudio_cli.errors import AudioError
from stepaudio_cli.url_audio import UrlFetching, fetch, load_source, redact


def wav_bytes(seconds: float = 1.0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = wav_bytes()
PAGE = b"<!DOCTYPE html><html><head><title>Episode 1</title></head><body><p>Listen</p></body></html>"


class Media(BaseHTTPRequestHandler):
    """Serves ``routes``: path -> (status, headers, body); records each request's path and headers.
    A route's body may be a callable (handler) -> None that writes the reply itself."""

    routes: dict = {}
    seen: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.seen.append((self.path, dict(self.headers)))
        route = self.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_error(404, "Not Found")
            return
        if callable(route):
            route(self)
            return
        status, headers, body = route
        self.send_response(status)
        for k, v in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def media(http_servers):
    """``media(routes) -> (base_url, seen)``: a server with its own routes and request log."""

    def start(routes: dict):
        handler = type("H", (Media,), {"routes": routes, "seen": []})
        return http_servers(handler), handler.seen

    return start


def test_a_direct_file_is_fetched_checked_by_content_and_named_by_its_url(media):
    base, seen = media({"/episode": (200, {"Content-Type": "text/plain"}, WAV)})  # a wrong type, no extension
    path = fetch(base + "/episode")
    assert Path(path).read_bytes() == WAV and str(path) == base + "/episode"
    assert path.exists() and Path(path).is_relative_to(Path(url_audio.cache_dir()))
    audio = load_source(base + "/episode")
    assert audio.name == base + "/episode" and abs(audio.duration - 1.0) < 0.01


def test_a_redirect_chain_is_followed_and_bounded(media):
    hop = lambda to: (302, {"Location": to}, b"")  # noqa: E731
    base, _ = media({"/a": hop("/b"), "/b": hop("/c"), "/c": hop("/clip.wav"), "/clip.wav": (200, {}, WAV)})
    assert Path(fetch(base + "/a")).read_bytes() == WAV
    with pytest.raises(AudioError, match=r"/a: more than 2 redirects$"):
        fetch(base + "/a", UrlFetching(max_redirects=2, use_cache=False))


def test_404_is_one_line_naming_the_url(media):
    base, _ = media({})
    with pytest.raises(AudioError) as e:
        fetch(base + "/gone.mp3")
    assert e.value.message == f"{base}/gone.mp3: HTTP 404 Not Found" and e.value.exit_code == 2


def test_a_silent_server_times_out(media):
    def silent(handler):
        time.sleep(3)

    base, _ = media({"/slow.wav": silent})
    with pytest.raises(AudioError, match=r"/slow.wav: timed out \(no answer for 0.3 s\)"):
        fetch(base + "/slow.wav", UrlFetching(timeout=0.3))


def test_a_huge_body_is_refused_before_or_while_it_arrives(media):
    def endless(handler):  # no Content-Length: stops only when the client hangs up
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(WAV[:44])
        try:
            for _ in range(10_000):
                handler.wfile.write(b"\0" * 65536)
        except OSError:
            pass

    def declared(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(5 << 30))
        handler.end_headers()
        handler.wfile.write(WAV)

    base, _ = media({"/declared.wav": declared, "/endless.wav": endless})
    limits = UrlFetching(max_bytes=1 << 20)
    with pytest.raises(AudioError, match=r"/declared.wav: 5.0 GiB, over the 1.0 MiB limit$"):
        fetch(base + "/declared.wav", limits)
    with pytest.raises(AudioError, match=r"/endless.wav: larger than the 1.0 MiB limit$"):
        fetch(base + "/endless.wav", limits)
    assert not list(url_audio.cache_dir().glob("*/media*"))  # nothing half-written is left


def test_a_page_without_yt_dlp_says_to_install_the_extra(media, monkeypatch):
    monkeypatch.setitem(sys.modules, "yt_dlp", None)  # as if not installed
    base, _ = media({"/watch": (200, {"Content-Type": "audio/mpeg"}, PAGE)})  # the type lies: content decides
    with pytest.raises(AudioError) as e:
        fetch(base + "/watch")
    assert e.value.message == (
        f"{base}/watch: a web page, not an audio file; to take the audio from pages, install the URL extra: "
        "pip install 'stepaudio[url]'"
    )


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 2000, "not audio: a PNG image"),
        (b'{"error": "expired"}', "not audio: JSON"),
        (b"Access denied\n", "not audio: text"),
        (b'<?xml version="1.0"?><rss></rss>', "not audio: an XML document"),
    ],
)
def test_what_is_not_audio_is_refused_by_its_content(media, body, what):
    base, _ = media({"/clip.wav": (200, {"Content-Type": "audio/wav"}, body)})
    with pytest.raises(AudioError, match=f"/clip.wav: {what}"):
        fetch(base + "/clip.wav")


def test_an_unknown_binary_is_left_to_the_decoder_which_names_the_url(media):
    base, _ = media({"/x.mp3": (200, {}, bytes(range(256)) * 8)})
    with pytest.raises(AudioError, match=rf"^{base}/x.mp3: "):
        load_source(base + "/x.mp3")


def test_a_body_cut_short_is_resumed_with_range(media):
    cut = 20_000

    def flaky(handler):
        asked = handler.headers.get("Range")
        if asked is None:  # promise the whole file, send part of it, hang up
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(WAV)))
            handler.send_header("ETag", '"v1"')
            handler.end_headers()
            handler.wfile.write(WAV[:cut])
            handler.close_connection = True
            return
        start = int(asked.removeprefix("bytes=").rstrip("-"))
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(WAV) - 1}/{len(WAV)}")
        handler.send_header("Content-Length", str(len(WAV) - start))
        handler.end_headers()
        handler.wfile.write(WAV[start:])

    base, seen = media({"/clip.wav": flaky})
    assert Path(fetch(base + "/clip.wav")).read_bytes() == WAV
    assert [h.get("Range") for _, h in seen] == [None, f"bytes={cut}-"]
    assert seen[1][1]["If-Range"] == '"v1"'


def test_a_resume_the_server_ignores_starts_over(media):
    calls = []

    def no_ranges(handler):
        calls.append(handler.headers.get("Range"))
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(WAV)))
        handler.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
        handler.end_headers()
        handler.wfile.write(WAV if len(calls) > 1 else WAV[:5000])

    base, _ = media({"/clip.wav": no_ranges})
    assert Path(fetch(base + "/clip.wav")).read_bytes() == WAV
    assert calls == [None, "bytes=5000-"]


def test_revalidation_with_etag_costs_no_body_and_picks_up_a_change(media):
    version = {"etag": '"v1"', "body": WAV}

    def etagged(handler):
        if handler.headers.get("If-None-Match") == version["etag"]:
            handler.send_response(304)
            handler.end_headers()
            return
        handler.send_response(200)
        handler.send_header("ETag", version["etag"])
        handler.send_header("Content-Length", str(len(version["body"])))
        handler.end_headers()
        handler.wfile.write(version["body"])

    base, seen = media({"/clip.wav": etagged})
    first = Path(fetch(base + "/clip.wav"))
    assert Path(fetch(base + "/clip.wav")) == first and first.read_bytes() == WAV
    assert seen[1][1]["If-None-Match"] == '"v1"'
    version.update(etag='"v2"', body=wav_bytes(2.0))
    assert Path(fetch(base + "/clip.wav")).read_bytes() == version["body"]
    fetch(base + "/clip.wav", UrlFetching(use_cache=False))  # --no-cache: no conditions, the whole body
    assert "If-None-Match" not in seen[-1][1] and len(seen) == 4


def test_the_cache_keeps_to_its_size_least_recently_used_first(media, monkeypatch):
    """Past the cap, a fetch removes the files of the URLs used longest ago, but not those of a
    URL used within the last day, being fetched now (its lock held), or the one just fetched."""
    import fcntl
    import os

    from stepaudio_cli import url_cache

    monkeypatch.setattr(url_cache, "TRIM_EVERY_S", 0.0)  # every fetch trims
    base, _ = media({f"/{n}.wav": (200, {}, WAV) for n in "abcde"})
    folders = {}
    for n in "abcde":
        folders[n] = Path(fetch(f"{base}/{n}.wav")).parent
    day = url_cache.KEEP_RECENT_S
    for age, n in zip((5 * day, 4 * day, 3 * day, 2 * day), "abcd"):  # e: used now
        stamp = time.time() - age
        os.utime(folders[n] / "meta.json", (stamp, stamp))
    foreign = url_cache.cache_dir() / "notes"  # not a folder we name: never counted or touched
    foreign.mkdir()
    (foreign / "media").write_bytes(WAV * 4)
    os.utime(foreign / "media", (0, 0))
    held = os.open(folders["a"] / "lock", os.O_RDWR)  # a fetch of `a` is under way
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        # Room for three of the five: `a` (oldest, but held) stays, `b` and `c` go, `d` is enough.
        monkeypatch.setattr(url_cache, "MAX_CACHE_BYTES", int(3.5 * len(WAV)))
        refetched = Path(fetch(f"{base}/e.wav"))
    finally:
        os.close(held)
    assert refetched.read_bytes() == WAV
    kept = {n for n, folder in folders.items() if (folder / "media").exists()}
    assert kept == {"a", "d", "e"}
    assert all((folders[n] / "lock").exists() and not (folders[n] / "meta.json").exists() for n in "bc")
    # A URL used within the last day keeps its files, whatever the size; an emptied one fetches again.
    monkeypatch.setattr(url_cache, "MAX_CACHE_BYTES", 0)
    assert Path(fetch(f"{base}/b.wav")).read_bytes() == WAV
    assert {n for n, folder in folders.items() if (folder / "media").exists()} == {"b", "e"}
    assert (foreign / "media").read_bytes() == WAV * 4


def test_a_cache_lock_that_is_a_link_is_one_error_never_followed(media, tmp_path):
    from stepaudio_cli import url_cache

    base, _ = media({"/a.wav": (200, {}, WAV)})
    folder = url_cache.cache_dir() / url_cache.folder_name(base + "/a.wav")
    folder.mkdir(parents=True)
    (folder / "lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(AudioError, match=r"/a\.wav: cannot lock the cache folder .*"):
        fetch(base + "/a.wav")
    assert not (tmp_path / "elsewhere").exists()


def test_credentials_in_a_url_are_never_shown(media):
    assert redact("https://bob:hunter2@example.org/a.mp3?X-Amz-Signature=abc&v=1&access_token=zz#t=1") == (
        "https://***@example.org/a.mp3?X-Amz-Signature=***&v=1&access_token=***#t=1"
    )
    assert redact("https://www.youtube.com/watch?v=dQw4w9WgXcQ") == "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    base, _ = media({})
    secret = base.replace("http://", "http://bob:hunter2@") + "/gone.wav?token=s3cret"
    with pytest.raises(AudioError) as e:
        fetch(secret)
    assert "hunter2" not in e.value.message and "s3cret" not in e.value.message
    assert e.value.message.startswith(base.replace("http://", "http://***@") + "/gone.wav?token=***: HTTP 404")


def test_a_connection_refused_names_the_url():
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/a.wav"
    with pytest.raises(AudioError, match=rf"^{url}: cannot connect \(.*refused"):
        fetch(url)


def test_yt_dlp_takes_the_audio_of_a_page(media):
    page = PAGE.replace(b"<p>Listen</p>", b'<audio src="/media/ep1.wav"></audio>')
    base, seen = media({"/episode-1": (200, {"Content-Type": "text/html"}, page), "/media/ep1.wav": (200, {}, WAV)})
    path = fetch(base + "/episode-1")
    assert Path(path).read_bytes() == WAV and str(path) == base + "/episode-1"
    served = len(seen)
    assert Path(fetch(base + "/episode-1")).read_bytes() == WAV and len(seen) == served  # from the cache


def test_yt_dlp_failure_is_one_line_naming_the_page(media):
    base, _ = media({"/empty": (200, {"Content-Type": "text/html"}, PAGE)})
    with pytest.raises(AudioError, match=rf"^{base}/empty: yt-dlp: "):
        fetch(base + "/empty")


# --- ask and batch with URLs, against a scripted model server --------------------------------------


class Model(BaseHTTPRequestHandler):
    """A scripted OpenAI-compatible server: every chat request gets the same short stream."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        reply_json(self, {"data": [{"id": "scripted", "max_model_len": 4096}]})

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        reply_stream(self, [{"reasoning": "A tone."}, {"content": "A beep."}], "stop", {"prompt_tokens": 30})


runner = CliRunner()


def test_ask_answers_a_url_and_records_it(media, http_servers):
    base, _ = media({"/clip": (200, {}, WAV)})
    model = http_servers(Model)
    result = runner.invoke(app, ["ask", "--server", model, "--json", base + "/clip", "What is it?"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["file"] == base + "/clip" and record["answer"] == "A beep."


def test_ask_with_a_404_url_is_one_line_exit_2(media, http_servers):
    base, _ = media({})
    result = runner.invoke(app, ["ask", "--server", http_servers(Model), base + "/nope.wav", "What is it?"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {base}/nope.wav: HTTP 404 Not Found"


def test_batch_records_the_url_and_its_content_hash_and_a_rerun_resumes(media, http_servers, tmp_path):
    base, seen = media({"/a.wav": (200, {"ETag": '"a"'}, WAV)})
    model = http_servers(Model)
    out = tmp_path / "out.jsonl"
    args = ["batch", "--server", model, "-p", "What is it?", "-o", str(out), base + "/a.wav"]
    assert runner.invoke(app, args).exit_code == 0
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["file"] == base + "/a.wav" and record["sha256"] == hashlib.sha256(WAV).hexdigest()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and re.search(r"already done\s+1\b", again.stderr), again.stderr
    assert len(out.read_text().splitlines()) == 1
    assert seen[-1][1].get("If-None-Match") == '"a"'  # revalidated, not fetched again


def test_cached_audio_decodes_as_the_original(media):
    base, _ = media({"/clip.wav": (200, {}, WAV)})
    audio = load_source(base + "/clip.wav")
    np.testing.assert_allclose(audio.samples, load_source(str(_write(WAV))).samples)


def _write(data: bytes) -> Path:
    path = url_audio.cache_dir().parent / "local.wav"
    path.write_bytes(data)
    return path
