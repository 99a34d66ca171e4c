"""`stepaudio download`: model weights from the Hugging Face hub (or a mirror), resumable.

Also checks a local copy: against the hub's file list (sizes, LFS sha256, git blob ids), or
offline: against the file list recorded when it was downloaded (:data:`~stepaudio_cli.download_files.MANIFEST`, the same
sizes and hashes), and every safetensors shard the index names is present and complete.
A hub that cannot be reached (no network, a name that does not resolve, nothing listening)
is one line naming its address; ``--check`` then checks offline and says so.
"""

from __future__ import annotations

import errno
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from stepaudio_cli.download_files import (
    GIT_ID,
    CacheLayout,
    LocalDirLayout,
    RemoteFile,
    git_blob_id,
    inside,
    remote_file,
)
from stepaudio_cli.errors import UserError

SAFETY_MARGIN = 1 << 30  # keep 1 GiB free beyond the download


def _hub_errors():
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    return (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        LocalEntryNotFoundError,
    )


def shown(url: str) -> str:
    """``url`` as printed and recorded: a user name or password in it becomes ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def unreachable(e: BaseException) -> str | None:
    """Why the hub could not be reached, when ``e`` (or what caused it) says the connection
    never got an answer: the socket error under the HTTP library's own (huggingface_hub 2
    raises httpx2's, ours httpx's; both chain the OS error). None for any other failure."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return "its name does not resolve: no network, or no DNS"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused: nothing listens there"
        if isinstance(cause, TimeoutError):
            return "no answer: timed out"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN):
            return "network unreachable"
        cause = cause.__cause__ or cause.__context__
    return None


class HubUnreachable(UserError):
    """The hub (or mirror) at ``endpoint`` gave no answer at all."""

    exit_code = 1

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(
            f"cannot reach the hub at {shown(endpoint)} ({reason}); "
            "check the network, or name a mirror with --endpoint / HF_ENDPOINT"
        )
        self.endpoint = endpoint
        self.reason = reason


def explain(e: BaseException, repo_id: str, revision: str | None, endpoint: str) -> UserError:
    """One actionable line for a hub failure."""
    reason = unreachable(e)
    if reason:
        return HubUnreachable(endpoint, reason)
    gated, not_found, no_revision, http_error, offline, local_missing = _hub_errors()
    endpoint = shown(endpoint)
    page = f"{endpoint.rstrip('/')}/{repo_id}"
    if isinstance(e, gated):
        return explain_gated(repo_id, page)
    if isinstance(e, no_revision):
        return UserError(f"{repo_id}: no revision {revision!r} (a branch, tag or commit on {page})", exit_code=1)
    if isinstance(e, not_found):
        return UserError(
            f"{repo_id}: not found on {endpoint}, or private and your token cannot see it "
            "(check the name; pass --token / set HF_TOKEN)",
            exit_code=1,
        )
    if isinstance(e, offline | local_missing):
        return UserError(
            f"{repo_id}: the hub is offline (HF_HUB_OFFLINE=1) and the files are not in the cache", exit_code=1
        )
    if isinstance(e, http_error):
        status = getattr(getattr(e, "response", None), "status_code", None)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if status in (401, 403):
            return UserError(f"{repo_id}: access denied ({status}): {first}; pass --token / set HF_TOKEN", exit_code=1)
        return UserError(f"{repo_id}: the hub answered: {first}", exit_code=1)
    text = " ".join(str(e).split()) or type(e).__name__
    return UserError(f"cannot download {repo_id} from {endpoint}: {text[:200]}", exit_code=1)


class Downloader:
    def __init__(self, repo_id: str, *, revision: str | None, endpoint: str | None, token: str | None) -> None:
        from huggingface_hub import HfApi, constants
        from huggingface_hub.utils import logging as hub_logging

        # Retries are reported by our progress; a final failure becomes one error line.
        hub_logging.set_verbosity_error()
        self.repo_id = repo_id
        self.revision = revision
        self.endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
        if not token:  # HF_TOKEN, else the token `hf auth login` saved: for the listing and every file
            from huggingface_hub import get_token

            token = get_token()
        self.token = token or None
        self.api = HfApi(endpoint=self.endpoint, token=self.token)
        self.commit: str | None = None

    def _guard(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - hub and network errors become one line
            raise explain(e, self.repo_id, self.revision, self.endpoint) from None

    def files(self) -> list[RemoteFile]:
        info = self._guard(self.api.model_info, self.repo_id, revision=self.revision, files_metadata=True)
        self.commit = info.sha
        if self.commit is not None and not GIT_ID.fullmatch(str(self.commit)):
            raise UserError(
                f"{self.repo_id}: the hub sent a commit id that is not one: {str(self.commit)[:80]!r}", exit_code=1
            )
        out = []
        for s in info.siblings or []:
            lfs = getattr(s, "lfs", None)
            sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            out.append(remote_file(self.repo_id, s.rfilename, s.size, sha, getattr(s, "blob_id", None)))
        if not out:
            raise UserError(f"{self.repo_id}: the repository has no files", exit_code=1)
        return out

    def layout(self, local_dir: Path | None) -> LocalDirLayout | CacheLayout:
        """Where the files go: ``local_dir``, or the HF cache (call after :meth:`files`)."""
        return LocalDirLayout(local_dir) if local_dir else CacheLayout(self.repo_id, self.commit or "")

    def download(self, files: list[RemoteFile], layout: LocalDirLayout | CacheLayout, progress) -> Path:
        """Fetch every file (4 at a time), resuming partial files left by an earlier run."""
        import httpx

        headers = {"User-Agent": "stepaudio"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = httpx.Timeout(60.0, connect=15.0)
        layout.record(self.manifest(files))
        with httpx.Client(headers=headers, timeout=timeout, follow_redirects=True) as client:

            def one(f: RemoteFile) -> None:
                final, partial = layout.paths(f)
                inside(layout.root, final)  # resolves what exists of it: a symlinked folder or file
                inside(layout.root, partial)
                if layout.complete(f):
                    progress.advance(f.size)
                else:
                    url = f"{self.endpoint}/{self.repo_id}/resolve/{self.commit or self.revision or 'main'}/{f.name}"
                    fetch_resumable(client, url, partial, f, progress, self)
                    final.parent.mkdir(parents=True, exist_ok=True)
                    partial.replace(final)
                layout.publish(f)
                progress.file_done(f)

            with ThreadPoolExecutor(max_workers=4) as pool:
                for future in [pool.submit(one, f) for f in files]:
                    future.result()
        return layout.finish(self.revision or "main")

    def manifest(self, files: list[RemoteFile]) -> dict:
        """What ``--check --offline`` later checks against: the hub's list as it was now."""
        return {
            "repo_id": self.repo_id,
            "commit": self.commit,
            "endpoint": shown(self.endpoint),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id} for f in files],
        }

    def http_error(self, response, name: str) -> UserError:
        code = response.headers.get("X-Error-Code", "")
        page = f"{self.endpoint}/{self.repo_id}"
        if code == "GatedRepo":
            return explain_gated(self.repo_id, page)
        if code == "RevisionNotFound":
            return UserError(
                f"{self.repo_id}: no revision {self.revision!r} (a branch, tag or commit on {page})", exit_code=1
            )
        message = response.headers.get("X-Error-Message") or response.reason_phrase
        return UserError(f"{self.repo_id}: {name}: the hub answered {response.status_code}: {message}", exit_code=1)


def explain_gated(repo_id: str, page: str) -> UserError:
    return UserError(
        f"{repo_id}: gated model: accept its terms at {page} while logged in, then log in here "
        "(`hf auth login`) or pass --token / set HF_TOKEN",
        exit_code=1,
    )


ATTEMPTS = 5


def fetch_resumable(client, url: str, partial: Path, f: RemoteFile, progress, hub: Downloader) -> None:
    """Stream ``url`` into ``partial``, continuing from its current size (HTTP Range); retry
    dropped connections from where they stopped; verify size and sha256 at the end."""
    import httpx

    partial.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, ATTEMPTS + 1):
        have = partial.stat().st_size if partial.exists() else 0
        if have > f.size:
            partial.unlink()
            have = 0
        if have == f.size:
            break
        if attempt == 1:
            progress.advance(have)  # bytes a previous run already fetched
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with client.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise hub.http_error(response, f.name)
                if have and response.status_code != 206:  # the server ignored Range: start over
                    progress.advance(-have)
                    have = 0
                with open(partial, "ab" if have else "wb") as out:
                    for block in response.iter_bytes(1 << 20):
                        out.write(block)
                        progress.advance(len(block))
            if partial.stat().st_size == f.size:
                break
        except httpx.HTTPError as e:
            if attempt == ATTEMPTS and unreachable(e) and isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
                raise UserError(
                    f"{f.name}: {HubUnreachable(hub.endpoint, unreachable(e)).message}; "
                    "run the same command again to resume",
                    exit_code=1,
                ) from None
            if attempt == ATTEMPTS:
                raise UserError(
                    f"{f.name}: download interrupted ({' '.join(str(e).split())[:120]}); "
                    "run the same command again to resume",
                    exit_code=1,
                ) from None
            time.sleep(min(2.0**attempt, 20.0) * 0.1)
    if partial.stat().st_size != f.size:
        raise UserError(
            f"{f.name}: got {partial.stat().st_size} bytes, expected {f.size}; run again to resume", exit_code=1
        )
    from stepaudio_cli.audio import sha256_file

    if f.sha256 and sha256_file(partial) != f.sha256:
        partial.unlink()
        raise UserError(f"{f.name}: sha256 mismatch after download (file removed); run again", exit_code=1)
    if not f.sha256 and f.blob_id and git_blob_id(partial) != f.blob_id:
        partial.unlink()
        raise UserError(
            f"{f.name}: content differs from the hub's after download (file removed); run again", exit_code=1
        )


def check_disk(files: list[RemoteFile], where: Path, have: int) -> None:
    need = sum(f.size for f in files) - have
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need + SAFETY_MARGIN > free:
        raise UserError(
            f"{probe}: not enough disk space: the download needs {_gb(need)} more, {_gb(free)} free "
            f"(choose another place with --local-dir or HF_HOME)",
            exit_code=1,
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
