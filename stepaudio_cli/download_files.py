"""What a download writes and where: the hub's file list checked entry by entry (``RemoteFile``:
names that stay inside the folder, sizes and hashes of the right form), the two places files land
(a folder of the user's, or the Hugging Face cache layout), the file list recorded beside them
(``MANIFEST``), and git blob ids."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from stepaudio_cli.errors import UserError


@dataclass
class RemoteFile:
    name: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git blob sha1 (non-LFS files)


GIT_ID = re.compile(r"[0-9a-f]{40}")  # a git object id: a commit or a blob
_HEX64 = re.compile(r"[0-9a-f]{64}")


def safe_name(name: object) -> bool:
    """A hub file name that stays inside the folder it is written to: relative, ``/``-separated,
    no ``..`` or empty parts, no backslash, drive letter or control character."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    if re.match(r"^[A-Za-z]:", name) or any(ord(c) < 32 or c == "\x7f" for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def remote_file(repo_id: str, name, size, sha256, blob_id) -> RemoteFile:
    """One entry of the hub's file list, checked: a name that escapes the target folder, or a
    size or hash of the wrong form (hashes name files in the cache), is refused."""
    if not safe_name(name):
        raise UserError(
            f"{repo_id}: the hub lists a file outside the model folder: {str(name)[:200]!r}; nothing was downloaded",
            exit_code=1,
        )
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise UserError(f"{repo_id}: {name}: the hub gives no valid size ({size!r})", exit_code=1)
    if sha256 is not None and not (isinstance(sha256, str) and _HEX64.fullmatch(sha256)):
        raise UserError(f"{repo_id}: {name}: the hub gives no valid sha256 ({str(sha256)[:80]!r})", exit_code=1)
    if blob_id is not None and not (isinstance(blob_id, str) and GIT_ID.fullmatch(blob_id)):
        raise UserError(f"{repo_id}: {name}: the hub gives no valid blob id ({str(blob_id)[:80]!r})", exit_code=1)
    return RemoteFile(name, size or 0, sha256, blob_id)


def inside(root: Path, path: Path) -> Path:
    """``path``, after checking that it resolves (symlinks followed) inside ``root``."""
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise UserError(f"{path}: resolves outside {root} (through a symlink?); not written", exit_code=1)
    return path


#: The file list a download records (a local folder's own file; in the HF cache, one per
#: commit beside ``snapshots/``, where the cache's tools do not look).
MANIFEST = ".stepaudio-manifest.json"
CACHE_MANIFESTS = "stepaudio-manifests"


class _Layout:
    root: Path

    def manifest_path(self) -> Path:
        raise NotImplementedError

    def record(self, manifest: dict) -> None:
        """Write ``manifest`` (whole, or not at all) where :func:`manifest_for` finds it."""
        path = self.manifest_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        inside(self.root, path)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(manifest, indent=1) + "\n")
        temporary.replace(path)

    def paths(self, f: RemoteFile) -> tuple[Path, Path]:
        """(final path, partial path) of ``f``."""
        raise NotImplementedError

    def complete(self, f: RemoteFile) -> bool:
        """Already downloaded: by size for LFS files (--check compares their sha256), by git
        blob id for the small others, so a rerun repairs what --check calls corrupted."""
        final = self.paths(f)[0]
        if not final.is_file() or final.stat().st_size != f.size:
            return False
        return bool(f.sha256) or not f.blob_id or git_blob_id(final) == f.blob_id


class LocalDirLayout(_Layout):
    """Files land in ``root``; partial files wait in ``root/.stepaudio-partial``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def paths(self, f: RemoteFile) -> tuple[Path, Path]:
        return self.root / f.name, self.root / ".stepaudio-partial" / (f.name + ".part")

    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def publish(self, f: RemoteFile) -> None:
        pass

    def finish(self, ref: str) -> Path:
        shutil.rmtree(self.root / ".stepaudio-partial", ignore_errors=True)
        return self.root


class CacheLayout(_Layout):
    """The Hugging Face cache layout (HF_HOME/hub): blobs by etag, a snapshot per commit of
    links to them, refs naming commits; other tools (vLLM, transformers) find files there."""

    def __init__(self, repo_id: str, commit: str) -> None:
        from huggingface_hub import constants

        self.root = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
        self.commit = commit
        self.snapshot = self.root / "snapshots" / commit

    def manifest_path(self) -> Path:
        return self.root / CACHE_MANIFESTS / f"{self.commit}.json"

    @staticmethod
    def etag(f: RemoteFile) -> str:
        return f.sha256 or f.blob_id or f.name.replace("/", "_")

    def paths(self, f: RemoteFile) -> tuple[Path, Path]:
        blob = self.root / "blobs" / self.etag(f)
        return blob, blob.with_name(blob.name + ".incomplete")

    def publish(self, f: RemoteFile) -> None:
        link = inside(self.root, self.snapshot / f.name)
        link.parent.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.paths(f)[0], link.parent)
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(target, link)

    def finish(self, ref: str) -> Path:
        if ref != self.commit:
            refs = self.root / "refs" / ref
            refs.parent.mkdir(parents=True, exist_ok=True)
            refs.write_text(self.commit)
        return self.snapshot


def git_blob_id(path: Path) -> str:
    h = hashlib.sha1()
    h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
