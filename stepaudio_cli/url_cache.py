"""The URL cache on disk (``$XDG_CACHE_HOME/stepaudio/urls``): a folder per URL (named by a hash
of the URL), the lock two fetches of one URL take turns with, the metadata beside the media, and
keeping the whole within ``MAX_CACHE_BYTES``.

Trimming removes the least recently used URLs' files first (``trim``, after every fetch), and
never the files of a URL used in the last ``KEEP_RECENT_S`` (a batch reads what it fetched after
the fetch, outside the lock) or of one being fetched now (its lock is held). Only our own names,
in folders named as we name them, are removed; a folder keeps its lock file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

MAX_CACHE_BYTES = 10 << 30  # five of the largest bodies fetched (2 GiB), or ~40 four-hour podcasts
KEEP_RECENT_S = 24 * 3600  # a URL used within this long keeps its files, whatever the size
TRIM_EVERY_S = 10.0  # a process trims at most this often (a batch of 10,000 URLs scans the cache ~0.1 s each)
_trimmed_at = float("-inf")
_FOLDER = re.compile(r"[0-9a-f]{32}")
_FILES = ("media", "media.part", "meta.json", "meta.tmp")  # ours, in each folder (with `lock`, `page/`)


def folder_name(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stepaudio" / "urls"


@contextlib.contextmanager
def locked(path: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the lock file ``path`` (exclusive, never through a symlink) for the block, so fetches
    of one URL and the trim take turns; with ``wait`` False the block gets False at once when
    another holds it. OSError when the file cannot be opened."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


class Cache:
    """One URL's folder in the cache (see ``url_audio``'s docstring for what it holds)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder, self.name = folder, name
        self.media, self.part, self._meta = folder / "media", folder / "media.part", folder / "meta.json"
        self.meta = self._read_meta()

    def _read_meta(self) -> dict:
        try:
            meta = json.loads(self._meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def save(self, **fields) -> None:
        self.meta = {**self.meta, "url": self.name, **fields}
        tmp = self._meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.meta), encoding="utf-8")
        os.replace(tmp, self._meta)

    def validators(self) -> dict[str, str]:
        return {k: v for k in ("etag", "last_modified") if isinstance(v := self.meta.get(k), str)}

    def clear(self) -> None:
        for p in (self.media, self.part, self._meta):
            p.unlink(missing_ok=True)
        self.meta = {}

    def touch(self) -> None:
        """Mark the URL used now (what ``trim`` orders by)."""
        with contextlib.suppress(OSError):
            os.utime(self._meta)


def trim_now_and_then(keep: Path) -> None:
    """:func:`trim` after a fetch of ``keep``, unless this process trimmed in the last ``TRIM_EVERY_S``."""
    global _trimmed_at
    if time.monotonic() - _trimmed_at >= TRIM_EVERY_S:
        _trimmed_at = time.monotonic()
        trim(keep)


def trim(keep: Path | None = None, max_bytes: int | None = None, now: float | None = None) -> list[Path]:
    """Remove the files of the least recently used URLs until the cache holds ``max_bytes`` at
    most (None: ``MAX_CACHE_BYTES``), sparing ``keep`` (the folder just fetched), URLs used in
    the last ``KEEP_RECENT_S`` and URLs being fetched. Returns the folders emptied. Best effort:
    what cannot be read or removed stays, and the fetch that called it goes on."""
    now = time.time() if now is None else now
    max_bytes = MAX_CACHE_BYTES if max_bytes is None else max_bytes
    entries = []
    try:
        folders = [f for f in cache_dir().iterdir() if _FOLDER.fullmatch(f.name)]
    except OSError:
        return []
    for folder in folders:
        size, used = _usage(folder)
        if size:
            entries.append((used, size, folder))
    total = sum(size for _, size, _ in entries)
    emptied = []
    for used, size, folder in sorted(entries):
        if total <= max_bytes or now - used < KEEP_RECENT_S:
            break
        if folder != keep and _empty(folder):
            total -= size
            emptied.append(folder)
    return emptied


def _usage(folder: Path) -> tuple[int, float]:
    """Bytes of a URL's files, and when it was last used (its metadata's time, else its newest file's)."""
    size, newest, meta = 0, 0.0, None
    for name in _FILES:
        try:
            info = os.lstat(folder / name)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            size += info.st_size
            newest = max(newest, info.st_mtime)
            meta = info.st_mtime if name == "meta.json" else meta
    return size, meta if meta is not None else newest


def _empty(folder: Path) -> bool:
    """Remove a URL's files unless a fetch holds its lock; True when removed."""
    try:
        with locked(folder / "lock", wait=False) as held:
            if not held:
                return False
            for name in _FILES:
                with contextlib.suppress(FileNotFoundError):
                    path = folder / name
                    if stat.S_ISREG(os.lstat(path).st_mode):
                        path.unlink()
            shutil.rmtree(folder / "page", ignore_errors=True)
            return True
    except OSError:  # its lock cannot be opened, or a file not removed
        return False
