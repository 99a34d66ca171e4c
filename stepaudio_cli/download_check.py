"""`stepaudio download --check`: a local copy against the hub's file list (sizes, LFS sha256,
git blob ids), or offline: against the list recorded when it was downloaded
(:data:`~stepaudio_cli.download_files.MANIFEST`: the same sizes and hashes) when there is one, and
always that the config is Step-Audio's and every safetensors shard the index names is complete.
When the hub cannot be reached, the check is the offline one, and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stepaudio_cli.download import Downloader, HubUnreachable, shown
from stepaudio_cli.download_files import CACHE_MANIFESTS, MANIFEST, RemoteFile, git_blob_id, remote_file
from stepaudio_cli.errors import UserError


def check_against(files: list[RemoteFile], local: Path) -> list[str]:
    """Problems with ``local`` compared to the hub's list: missing, wrong size, wrong hash."""
    from stepaudio_cli.audio import sha256_file

    problems = []
    for f in files:
        path = local / f.name
        if not path.is_file():
            problems.append(f"{f.name}: missing")
        elif path.stat().st_size != f.size:
            problems.append(f"{f.name}: size {path.stat().st_size} bytes, expected {f.size}")
        elif f.sha256 and sha256_file(path) != f.sha256:
            problems.append(f"{f.name}: sha256 differs from the hub (corrupted)")
        elif not f.sha256 and f.blob_id and git_blob_id(path) != f.blob_id:
            problems.append(f"{f.name}: content differs from the hub (corrupted)")
    return problems


def manifest_for(local: Path) -> Path | None:
    """The file list recorded when ``local`` (a folder, or a cache snapshot) was downloaded."""
    if (local / MANIFEST).is_file():
        return local / MANIFEST
    if local.parent.name == "snapshots":
        cached = local.parent.parent / CACHE_MANIFESTS / f"{local.name}.json"
        if cached.is_file():
            return cached
    return None


def read_manifest(path: Path) -> tuple[dict, list[RemoteFile]]:
    """The recorded manifest and its files, checked as the hub's list is."""
    try:
        data = json.loads(path.read_text())
        entries = data.get("files") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ValueError("no file list")
        files = [remote_file(str(path), e["name"], e["size"], e["sha256"], e["blob_id"]) for e in entries]
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
        why = e.message.removeprefix(f"{path}: ") if isinstance(e, UserError) else " ".join(str(e).split())
        raise UserError(
            f"{path}: not a file list stepaudio recorded ({why[:120]}); "
            "check against the hub instead (leave out --offline)",
            exit_code=1,
        ) from None
    return data, files


@dataclass
class Check:
    where: Path
    problems: list[str]
    what: str  # what was compared with what, for the verdict line


def check_offline(local: Path) -> Check:
    """Without the hub: every file the download recorded has its size and hash (when a list was
    recorded), the config is Step-Audio, every shard named by the index is complete."""
    from stepaudio_cli.checkpoint import check_checkpoint
    from stepaudio_cli.weight_files import weight_problems

    problems: list[str] = []
    manifest = manifest_for(local)
    if manifest:
        data, files = read_manifest(manifest)
        problems += check_against(files, local)
        commit = str(data.get("commit") or "")[:12]
        what = f"checked offline: {len(files)} files against the list recorded at download of {commit or 'the copy'}"
    else:
        what = "checked offline: config and weight shards only; no file list was recorded at download, so no hashes"
    try:
        check_checkpoint(local, weights=False)
    except UserError as e:
        problems.append(e.message)
    return Check(local, list(dict.fromkeys(problems + weight_problems(local))), what)


def check_copy(
    repo_id: str,
    *,
    revision: str | None,
    local_dir: Path | None,
    endpoint: str | None,
    token: str | None,
    offline: bool,
    on_warning=lambda message: None,
) -> Check:
    """``download --check``: against the hub's list, or offline (``offline``, or when the hub
    cannot be reached: ``on_warning`` says so first)."""
    from stepaudio_cli.checkpoint import resolve_model

    if not offline:
        hub = Downloader(repo_id, revision=revision, endpoint=endpoint, token=token)
        try:
            files = hub.files()
        except HubUnreachable as e:
            on_warning(f"cannot reach the hub at {shown(e.endpoint)} ({e.reason}); checking what can be done offline")
        else:
            where = Path(local_dir or resolve_model(repo_id, revision=hub.commit or revision))
            return Check(
                where, check_against(files, where), f"checked {len(files)} files against {shown(hub.endpoint)}"
            )
    return check_offline(Path(local_dir or resolve_model(repo_id, revision=revision)))
