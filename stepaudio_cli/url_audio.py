"""Audio from URLs: an http(s) URL wherever an audio file is taken (ask, batch, the MCP tool, chat).

:func:`fetch` streams the URL into a private cache, ``$XDG_CACHE_HOME/stepaudio/urls/<hash of
the URL>/``, with httpx: a size limit (checked against Content-Length before the body, and while
it arrives), bounded redirects, connect and silence timeouts. The folder holds

- ``media``: a whole body, revalidated on the next use (If-None-Match / If-Modified-Since: a 304
  costs no body) and replaced atomically when it changed;
- ``media.part``: a body cut short, resumed with ``Range`` (``If-Range`` guards against a
  changed file; a server that ignores it sends the whole body again);
- ``meta.json``: the validators (ETag, Last-Modified), whether the media came from a page, and
  the URL with its credentials redacted (the full URL is kept nowhere);
- ``lock``: held while fetching, so two commands fetching one URL take turns.

The cache keeps to ``url_cache.MAX_CACHE_BYTES``: the least recently used URLs' files go first,
never those of a URL used in the last day or being fetched (``url_cache.trim``, after a fetch,
at most every few seconds).

What arrives is judged by its first bytes, never by its name or Content-Type (``media_sniff``):
a known media container goes on, HTML is a page, other text or a known non-media format (PDF,
PNG, ...) is refused; anything else is left to the audio decoder. A page (a video or podcast site) goes
through yt-dlp when the ``url`` extra is installed (audio only), else one line says to install
it. Every failure is one :class:`AudioError` naming the URL, credentials redacted (``redact``).

:class:`FetchedPath` is the cached file under its URL's name: it opens, stats and hashes the
cached bytes but prints as the redacted URL, so results record the URL as ``file`` and the
content's sha256, and a batch rerun resumes. :func:`load_source` decodes a path, ``-`` or a URL
(ask, chat and the MCP tool call it); batch reads the path :func:`fetch` returns.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from stepaudio_cli.audio import Audio, load_audio, load_file
from stepaudio_cli.errors import AudioError
from stepaudio_cli.media_sniff import SNIFF_BYTES, body_kind
from stepaudio_cli.url_cache import Cache, cache_dir, folder_name, locked, trim_now_and_then

MAX_URL_BYTES = 2 << 30  # the largest body fetched (a 4-hour podcast at 128 kbit/s is 230 MB)
MAX_REDIRECTS = 5
CONNECT_TIMEOUT = 15.0  # seconds to connect
READ_TIMEOUT = 60.0  # seconds a server may stay silent before the fetch fails
RESUME_TRIES = 3  # connections cut mid-body that are resumed (Range) before giving up
STATUS_EVERY = 8 << 20  # on_status hears of a download every this many bytes
URL_EXTRA = "pip install 'stepaudio[url]'"

_SCHEMES = ("http://", "https://")
# Query and fragment parameters whose values are secrets (signed URLs, API keys, session tokens).
_SECRET_PARAM = re.compile(
    r"(token|key|secret|sig|signature|password|passwd|pwd|auth|credential|session|x-amz-|x-goog-)", re.I
)


@dataclass(frozen=True)
class UrlFetching:
    """How URLs are fetched: ``use_cache`` False (``--no-cache``) fetches the whole body again,
    without revalidating or resuming, and replaces what was cached."""

    use_cache: bool = True
    max_bytes: int = MAX_URL_BYTES
    max_redirects: int = MAX_REDIRECTS
    timeout: float = READ_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT


def is_url(source: str) -> bool:
    """Whether ``source`` is an http(s) URL (anything else is a path, or ``-``)."""
    return source[:8].lower().startswith(_SCHEMES)


def redact(url: str) -> str:
    """``url`` fit to print or record: no ``user:password@``, secret query values as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}://{netloc}{re.sub(r'([?&#;])([^=&#;]*)=([^&#;]*)', _hide_secret, tail)}"


def _hide_secret(m: re.Match) -> str:
    return f"{m[1]}{m[2]}=***" if _SECRET_PARAM.search(unquote(m[2])) else m[0]


def _redact_text(text: str, url: str) -> str:
    """``text`` (a message from a library) with ``url`` and its secrets redacted."""
    text = text.replace(url, redact(url))
    rest = url.partition("://")[2]
    userinfo = rest.split("/", 1)[0].rpartition("@")[0]
    secrets = [userinfo, *(v for k, v in re.findall(r"[?&#;]([^=&#;]*)=([^&#;]*)", rest) if _SECRET_PARAM.search(k))]
    for secret in filter(None, secrets):
        text = text.replace(secret, "***")
    return text


class FetchedPath(type(Path())):
    """A URL's cached file: opens, stats and hashes as the file, prints as the (redacted) URL.
    Paths derived from it (``.parent``) are plain cache paths."""

    _url: str | None = None

    def __str__(self) -> str:
        return self._url or super().__str__()

    def __fspath__(self) -> str:
        return super().__str__()

    def __repr__(self) -> str:
        return f"FetchedPath({self._url!r} at {super().__str__()!r})"


def _fetched(path: Path, url: str) -> FetchedPath:
    fetched = FetchedPath(path)
    fetched._url = redact(url)
    return fetched


def load_source(source: str, fetching: UrlFetching = UrlFetching(), *, stdin=None) -> Audio:
    """Decode an audio file path, ``-`` (stdin) or an http(s) URL (fetched through the cache);
    the audio's name is the path, or the URL with credentials redacted."""
    if not is_url(source):
        return load_audio(source, stdin=stdin)
    path = fetch(source, fetching)
    return load_file(path, str(path))


def fetch(
    url: str, fetching: UrlFetching = UrlFetching(), on_status: Callable[[str], None] | None = None
) -> FetchedPath:
    """The cached file of ``url``: fetched, resumed or revalidated as needed; a page's audio
    through yt-dlp. ``on_status`` hears how far the download is."""
    name = redact(url)
    folder = cache_dir() / folder_name(url)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise AudioError(f"{name}: cannot create the cache folder {folder} ({e.strerror or e})") from None
    with contextlib.ExitStack() as hold:
        try:
            hold.enter_context(locked(folder / "lock"))
        except OSError as e:
            raise AudioError(f"{name}: cannot lock the cache folder {folder} ({e.strerror or e})") from None
        cache = Cache(folder, name)
        if not fetching.use_cache:
            cache.clear()
        if not (cache.meta.get("page") and cache.media.is_file()):  # a page's audio is not revalidated
            try:
                _Download(url, name, cache, fetching, on_status or (lambda _: None)).run()
            except _Page:
                _from_page(url, name, cache, fetching)
        cache.touch()
    trim_now_and_then(folder)
    return _fetched(cache.media, url)


class _Page(Exception):
    """The URL is a web page (HTML), not a media file."""


class _CutShort(Exception):
    """The connection ended before the whole body came."""


class _Download:
    """One URL's body into the cache: conditional, resumed, bounded, checked by its first bytes."""

    def __init__(self, url: str, name: str, cache: Cache, fetching: UrlFetching, on_status) -> None:
        self.url, self.name, self.cache, self.fetching, self.on_status = url, name, cache, fetching, on_status

    def run(self) -> None:
        import httpx

        timeout = httpx.Timeout(self.fetching.timeout, connect=self.fetching.connect_timeout)
        headers = {"User-Agent": "stepaudio", "Accept-Encoding": "identity"}
        with httpx.Client(
            follow_redirects=True, max_redirects=self.fetching.max_redirects, timeout=timeout, headers=headers
        ) as client:
            for _ in range(RESUME_TRIES + 1):
                try:
                    with client.stream("GET", self.url, headers=self._conditions()) as response:
                        if self._receive(response):
                            return
                except _CutShort:
                    continue
                except httpx.TooManyRedirects:
                    raise self._error(f"more than {self.fetching.max_redirects} redirects") from None
                except httpx.ConnectTimeout:
                    raise self._error(f"cannot connect (timed out after {self.fetching.connect_timeout:g} s)") from None
                except httpx.TimeoutException:
                    raise self._error(f"timed out (no answer for {self.fetching.timeout:g} s)") from None
                except httpx.ConnectError as e:
                    raise self._error(f"cannot connect ({_reason(e)})") from None
                except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                    if self.cache.part.is_file():
                        continue  # cut mid-body: resume
                    raise self._error(f"the server broke the connection ({_reason(e)})") from None
                except httpx.HTTPError as e:  # an unsupported redirect target, an invalid URL, ...
                    raise self._error(_reason(e)) from None
        have = self.cache.part.stat().st_size if self.cache.part.is_file() else 0
        tries = RESUME_TRIES + 1
        raise self._error(f"the connection was cut {tries} times (at {_size(have)}); run again to resume")

    def _conditions(self) -> dict[str, str]:
        """Headers that make the request conditional (revalidate) or partial (resume)."""
        valid = self.cache.validators()
        if self.cache.media.is_file() and valid:
            return {
                **({"If-None-Match": valid["etag"]} if "etag" in valid else {}),
                **({"If-Modified-Since": valid["last_modified"]} if "last_modified" in valid else {}),
            }
        have = self.cache.part.stat().st_size if self.cache.part.is_file() else 0
        etag = valid.get("etag", "")
        guard = etag if etag and not etag.startswith("W/") else valid.get("last_modified")  # If-Range: strong only
        return {"Range": f"bytes={have}-", "If-Range": guard} if have and guard else {}

    def _receive(self, response) -> bool:
        """Store what ``response`` brings; True once the media is whole in the cache."""
        status = response.status_code
        if status == 304 and self.cache.media.is_file():
            return True
        if status == 416:  # the part no longer fits the file: start over
            self.cache.part.unlink(missing_ok=True)
            return False
        if status >= 400:
            raise self._error(f"HTTP {status} {response.reason_phrase}".rstrip())
        if status not in (200, 206):
            raise self._error(f"unexpected HTTP {status} {response.reason_phrase}".rstrip())
        offset = self._resumed_at(response)
        total = _expected_total(response, offset)
        if total is not None and total > self.fetching.max_bytes:
            raise self._too_large(total)
        if offset == 0:
            self.cache.save(
                etag=response.headers.get("etag"),
                last_modified=response.headers.get("last-modified"),
                page=False,
                complete=False,
            )
        self.cache.media.unlink(missing_ok=True)
        size = self._write_body(response, offset)
        if total is not None and size < total:
            raise _CutShort
        if size == 0:
            raise self._error("the server sent an empty body")
        self._check_head()
        os.replace(self.cache.part, self.cache.media)
        self.cache.save(complete=True, bytes=size)
        return True

    def _resumed_at(self, response) -> int:
        """Where this body starts in the file: the part's length for a 206 that continues it, else 0."""
        have = self.cache.part.stat().st_size if self.cache.part.is_file() else 0
        if response.status_code == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", ""))
            if m and int(m[1]) == have and have:
                return have
            raise self._error("the server sent a part of the file that was not asked for")
        return 0

    def _write_body(self, response, offset: int) -> int:
        """Append the body to the part file (the raw bytes, as Content-Length and Range count them)."""
        size, sniffed, report = offset, offset >= SNIFF_BYTES, offset + STATUS_EVERY
        with open(self.cache.part, "ab" if offset else "wb") as f:
            for block in response.iter_raw():
                size += len(block)
                if size > self.fetching.max_bytes:
                    f.close()
                    self.cache.part.unlink(missing_ok=True)
                    raise self._too_large(None)
                f.write(block)
                if not sniffed and size >= SNIFF_BYTES:
                    f.flush()
                    self._check_head()
                    sniffed = True
                if size >= report:
                    self.on_status(f"fetching {self.name}: {_size(size)}")
                    report = size + STATUS_EVERY
        return size

    def _check_head(self) -> None:
        """Refuse text and known non-media formats; hand a page to yt-dlp (raises :class:`_Page`)."""
        with open(self.cache.part, "rb") as f:
            head = f.read(SNIFF_BYTES)
        kind = body_kind(head)
        if kind == "page":
            self.cache.part.unlink(missing_ok=True)
            self.cache.save(etag=None, last_modified=None)
            raise _Page
        if kind is not None and kind != "media":
            self.cache.part.unlink(missing_ok=True)
            raise self._error(f"not audio: {kind}")

    def _too_large(self, total: int | None) -> AudioError:
        limit = _size(self.fetching.max_bytes)
        return self._error(f"{_size(total)}, over the {limit} limit" if total else f"larger than the {limit} limit")

    def _error(self, what: str) -> AudioError:
        return AudioError(f"{self.name}: {_redact_text(what, self.url)}")


def _expected_total(response, offset: int) -> int | None:
    """The whole file's length, from Content-Range or Content-Length (None: not stated)."""
    m = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("content-range", ""))
    if m:
        return int(m[1])
    length = response.headers.get("content-length", "")
    return offset + int(length) if length.isdigit() else None


def _reason(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    m = re.search(r"\[Errno -?\d+\] (.*?)\]?$", text)
    return m[1] if m else text


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# --- pages: yt-dlp ----------------------------------------------------------------------------


def _from_page(url: str, name: str, cache: Cache, fetching: UrlFetching) -> None:
    """The audio of the page ``url`` into ``cache.media``, through yt-dlp (audio only)."""
    try:
        import yt_dlp
    except ImportError:
        raise AudioError(
            f"{name}: a web page, not an audio file; to take the audio from pages, install the URL extra: {URL_EXTRA}"
        ) from None
    work = cache.folder / "page"
    shutil.rmtree(work, ignore_errors=True)
    options = {
        "format": "bestaudio/best",  # an audio-only stream when the page has one; the decoder takes the rest
        "outtmpl": str(work / "media.%(ext)s"),
        "noplaylist": True,
        "playlist_items": "1",
        "max_filesize": fetching.max_bytes,
        "socket_timeout": fetching.timeout,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _QuietLog(),
        "cachedir": False,
        "color": {"stderr": "no_color", "stdout": "no_color"},
    }
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            ydl.extract_info(url, download=True)
    except yt_dlp.utils.YoutubeDLError as e:
        message = re.sub(r"^(ERROR: )?(\[[^\]]*\] )?", "", " ".join(str(e).split()))
        raise AudioError(f"{name}: yt-dlp: {_redact_text(message, url)}") from None
    files = sorted(p for p in work.glob("media.*") if p.suffix not in (".part", ".ytdl")) if work.is_dir() else []
    if not files:
        shutil.rmtree(work, ignore_errors=True)
        raise AudioError(f"{name}: yt-dlp found no audio on the page under the {_size(fetching.max_bytes)} limit")
    with open(files[0], "rb") as f:
        kind = body_kind(f.read(SNIFF_BYTES))
    if kind is not None and kind != "media":
        shutil.rmtree(work, ignore_errors=True)
        raise AudioError(f"{name}: not audio: the page's media is {kind}")
    os.replace(files[0], cache.media)
    shutil.rmtree(work, ignore_errors=True)
    cache.save(page=True, complete=True, etag=None, last_modified=None, bytes=cache.media.stat().st_size)


class _QuietLog:
    """yt-dlp's messages stay out of the terminal (errors come back as its exception)."""

    def debug(self, msg: str) -> None:
        pass

    info = warning = error = debug
