"""stepaudio download [REPO_ID]"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MODEL, KNOWN_MODELS
from stepaudio_cli.terminal import Terminal


def download(
    ctx: typer.Context,
    repo_id: Annotated[
        str,
        typer.Argument(
            envvar=options.MODEL.envvar, help=f"Hub repository id: {' or '.join(KNOWN_MODELS)}, or another."
        ),
    ] = DEFAULT_MODEL,
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit.")] = None,
    local_dir: Annotated[
        Path | None, typer.Option(help="Put the files here instead of the HF cache (HF_HOME).")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(envvar="HF_ENDPOINT", help="Hub URL or mirror.")] = None,
    token: Annotated[str | None, typer.Option(envvar="HF_TOKEN", help="Hub token (gated repo).")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Verify a local copy against the hub (sizes, hashes).")
    ] = False,
    offline: Annotated[
        bool, typer.Option("--offline", envvar="HF_HUB_OFFLINE", help="With --check: verify without the hub.")
    ] = False,
) -> None:
    """Download the model weights (resumable), or --check a local copy."""
    from stepaudio_cli import download as core
    from stepaudio_cli.download_check import check_copy
    from stepaudio_cli.errors import UserError

    term = options.terminal(ctx)
    if check:
        settings = {"revision": revision, "local_dir": local_dir, "endpoint": endpoint, "token": token}
        _report(term, check_copy(repo_id, **settings, offline=offline, on_warning=term.warn))
        return
    if offline:
        raise UserError("--offline only makes sense with --check (downloading needs the hub)")
    hub = core.Downloader(repo_id, revision=revision, endpoint=endpoint, token=token)
    files = hub.files()
    path = _fetch(term, hub, files, repo_id, revision, local_dir)
    term.info(f"Use it with: --model {path}" + ("" if local_dir else f"  (or --model {repo_id})"))
    term.write_out(f"{path}\n")


def _fetch(
    term: Terminal, hub, files, repo_id: str, revision: str | None, local_dir: Path | None, confirm: bool = False
) -> Path:
    """Download ``files`` with a progress bar; ``confirm``: ask y/N first (size, destination)."""
    from stepaudio_cli import download as core
    from stepaudio_cli.download_view import DownloadProgress
    from stepaudio_cli.errors import UserError

    total = sum(f.size for f in files)
    layout = hub.layout(local_dir)
    have = sum(f.size for f in files if layout.complete(f))
    core.check_disk(files, layout.root, have)
    term.info(f"{repo_id}@{(hub.commit or revision or 'main')[:12]}: {len(files)} files, {total / 1e9:.2f} GB")
    if confirm and not typer.confirm(f"Download {(total - have) / 1e9:.2f} GB to {layout.root}?", err=True):
        raise UserError(f"{repo_id}: not downloaded; `stepaudio download {repo_id}` gets it", exit_code=1)
    with DownloadProgress(term, total) as progress:
        path = hub.download(files, layout, progress)
    term.success(f"Downloaded to {path}")
    return path


def offer_download(term: Terminal, model: str) -> None:
    """First use: a hub model that is not downloaded yet is offered for download on a terminal
    (size, destination, y/N); elsewhere it stays today's one-line error."""
    import sys

    from stepaudio_cli import download as core
    from stepaudio_cli.checkpoint import looks_like_repo_id, resolve_model
    from stepaudio_cli.errors import UserError

    if Path(model).expanduser().exists() or not looks_like_repo_id(model):
        return
    try:
        resolve_model(model)
        return
    except UserError:
        if not (term.interactive and sys.stdin.isatty()):
            raise
    term.info(f"{model} is not downloaded yet.")
    hub = core.Downloader(model, revision=None, endpoint=None, token=None)
    _fetch(term, hub, hub.files(), model, None, None, confirm=True)


def _report(term: Terminal, check) -> None:
    from stepaudio_cli.errors import UserError

    if check.problems:
        for p in check.problems[:50]:
            term.labelled("bad", p)
        raise UserError(
            f"{check.where}: {len(check.problems)} problem(s) found ({check.what}); run `stepaudio download` to repair",
            exit_code=1,
        )
    term.success(f"{check.where}: OK ({check.what})")
