"""What a batch reads of its inputs before it decodes them: the files of folders, each real
file once; a file's header length (checked before anything is hashed); its content hash.

A folder's identity is its real path: records keep the path as the user typed it, and
:func:`identity` tells which input a record belongs to however it was named (``$PWD/x``,
``../w/x``, a symlinked folder).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from stepaudio_cli.audio import AUDIO_EXTENSIONS, header_length, sha256_file
from stepaudio_cli.audio_length import AudioLength
from stepaudio_cli.errors import UserError
from stepaudio_cli.url_audio import UrlFetching, fetch, is_url


def discover(
    inputs: Sequence[str], patterns: Sequence[str] = (), recursive: bool = False, urls: UrlFetching = UrlFetching()
) -> list[Path]:
    """Files to process, in a stable order, each real file once.

    Directories contribute files whose names match ``patterns`` (default: known audio
    extensions), and symlinks among them that lead nowhere (each becomes its failure record);
    explicitly named files are always included. Symlinks are followed, but a file reached
    twice (through a link, or named twice) counts once. An http(s) URL is fetched into the
    cache now (url_audio.py): its path reads the cached file and is named the URL.
    """
    found: list[Path] = []
    for item in inputs:
        path = fetch(item, urls) if is_url(item) else Path(item)
        if not path.exists():
            raise UserError(f"{item}: no such file or directory")
        if path.is_dir():
            found += sorted(_scan(path, patterns, recursive), key=lambda p: str(p))
        else:
            found.append(path)
    seen: set[str] = set()
    unique = []
    for p in found:
        real = identity(str(p))
        if real not in seen:
            seen.add(real)
            unique.append(p)
    return unique


def _scan(root: Path, patterns: Sequence[str], recursive: bool):
    def wanted(name: str) -> bool:
        if patterns:
            return any(fnmatch.fnmatch(name, pat) for pat in patterns)
        return Path(name).suffix.lower() in AUDIO_EXTENSIONS and not name.startswith(".")

    walker = os.walk(root, followlinks=False) if recursive else [(str(root), [], os.listdir(root))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            p = Path(dirpath) / name
            if wanted(name) and (p.is_file() or (p.is_symlink() and not p.exists())):
                yield p


_REAL: dict[str, str] = {}


def identity(name: str) -> str:
    """Which file ``name`` is: its real path (symlinks and ``..`` resolved), from here."""
    real = _REAL.get(name)
    if real is None:
        real = _REAL[name] = os.path.realpath(name)
    return real


def stamp(path: Path, info: os.stat_result | None = None) -> tuple:
    """Device, inode, size and modification time: what tells that a file changed."""
    info = info or os.stat(path)
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def regular(path: Path) -> os.stat_result:
    """The file's stat; OSError saying why it cannot be read as one file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise OSError(f"a symlink to {os.readlink(path)}, which does not exist") from None
        raise
    if not stat.S_ISREG(info.st_mode):
        raise OSError("not a regular file")
    return info


def header(path: Path, name: str) -> AudioLength | None:
    """The length the file's header (or container) states, after checking it is a readable
    file: what refuses a file too long before its content is hashed."""
    regular(path)
    with open(path, "rb"):  # readable at all (permissions): that file's failure, before anything else
        pass
    return header_length(path, name)


def content_hash(path: Path, known: dict[str, tuple[str, tuple]] | None = None) -> tuple[str, tuple]:
    """The file's sha256, read in blocks, and its stamp (to tell that it changed before it was
    decoded). ``known``: hashes computed before, by name, used while the stamp is the same."""
    before = stamp(path, regular(path))
    if known is not None and known.get(str(path), (None, None))[1] == before:
        return known[str(path)]
    sha = sha256_file(path)
    if stamp(path) != before:
        raise OSError("it changed while it was being read")
    if known is not None:
        known[str(path)] = (sha, before)
    return sha, before
