"""stepaudio batch DIR_OR_FILES..."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_WAIT_SERVER, SERVER_CONCURRENCY
from stepaudio_cli.errors import UserError

if TYPE_CHECKING:
    from stepaudio_cli.engines.settings import EngineSettings
    from stepaudio_cli.request import Sampling, Thinking
    from stepaudio_cli.url_audio import UrlFetching
    from stepaudio_cli.windows import Windowing

IO = "Input and output"


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    options.VIEW,
    options.URLS,
    vary=[options.BY_NAME["hide_reasoning"].vary(help="Leave reasoning out of the results.")],
)
def batch(
    ctx: typer.Context,
    inputs: Annotated[
        list[str], typer.Argument(help="Directories, audio files and/or http(s) URLs.", metavar="DIR_OR_FILES...")
    ],
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", envvar="STEPAUDIO_PROMPT", help="The question for every file.")
    ] = None,
    prompt_file: Annotated[Path | None, typer.Option(help="Read the question from a file.")] = None,
    glob: Annotated[
        list[str] | None,
        typer.Option(
            "--glob", "-g", help="Only files whose name matches (repeatable), e.g. '*.wav'.", rich_help_panel=IO
        ),
    ] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Descend into subdirectories.", rich_help_panel=IO)
    ] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            envvar="STEPAUDIO_OUTPUT",
            help="Results file, or - for stdout (default when piped).",
            rich_help_panel=IO,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", "-f", help="jsonl or csv (default: csv for -o *.csv, else jsonl).", rich_help_panel=IO
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            envvar="STEPAUDIO_CONCURRENCY",
            min=1,
            help=f"Requests in flight (default: 2 x --max-num-seqs in-process, {SERVER_CONCURRENCY} per server).",
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option(help="On resume, try files that failed before again.", rich_help_panel=IO)
    ] = False,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            "--overwrite",
            help="Start over: earlier results in the output file are kept in FILE.previous until the run completes.",
            rich_help_panel=IO,
        ),
    ] = False,
    retries: Annotated[int, typer.Option(min=0, help="Retries per file for server errors (with backoff).")] = 3,
    wait_server: Annotated[
        float,
        typer.Option(
            envvar="STEPAUDIO_WAIT_SERVER",
            min=0.0,
            rich_help_panel=options.ENGINE_PANEL,
            help="Seconds to wait for a server while none answers (--server); then the run stops "
            "and a rerun continues.",
        ),
    ] = DEFAULT_WAIT_SERVER,
    *,
    engine: EngineSettings,
    sampling: Sampling,
    system: str | None,
    thinking: Thinking,
    windowing: Windowing,
    urls: UrlFetching,
    keep_alive: float | None,
    sleep_for: float | None,
    hide_reasoning: bool,
) -> None:
    """Ask the same question about every audio file in directories; resumable JSONL/CSV results."""
    from stepaudio_cli import batch as core
    from stepaudio_cli.batch_settle import settle
    from stepaudio_cli.batch_view import BatchView
    from stepaudio_cli.resident import session
    from stepaudio_cli.store import Store, infer_format

    term = options.terminal(ctx)
    question = _question(prompt, prompt_file)
    settings = dataclasses.replace(engine, wait_server=wait_server)
    if output is None:
        if sys.stdout.isatty():
            raise UserError("give --output FILE for the results (or pipe stdout: -o -)")
        output = "-"
    store = Store(None if output == "-" else Path(output), infer_format(output, fmt), stdout=sys.stdout)
    if not store.resumable and (replace or retry_failed):
        raise UserError("--replace and --retry-failed need an output file (-o FILE)")
    files = core.discover(inputs, glob or (), recursive, urls)
    if not files:
        raise UserError(f"no audio files found in {', '.join(inputs)}" + ("" if recursive else " (try --recursive)"))
    job = core.BatchJob(
        prompt=question,
        system=system,
        sampling=sampling,
        thinking=thinking,
        concurrency=concurrency or settings.default_concurrency(),
        retries=retries,
        retry_failed=retry_failed,
        hide_reasoning=hide_reasoning,
        windowing=windowing,
    )
    store.open(files, replace=replace)  # locked, and checked to be ours and whole, before any engine starts
    view = BatchView(term, len(files))
    summary, hashes = None, {}
    try:
        if store.resumable:  # every file already has its record: no engine, no server to wait for
            summary = asyncio.run(settle(settings, job, store, files, hashes))
        if summary is None:
            with session(settings, keep_alive, view.status, warn=term.warn, sleep_for=sleep_for) as settings:
                summary = asyncio.run(
                    core.execute(
                        settings,
                        job,
                        store,
                        files,
                        on_status=view.status,
                        on_start=view.started,
                        on_progress=view.update,
                        hashes=hashes,
                    )
                )
    finally:
        view.close()
        store.close(finished=summary is not None and summary.complete)
    view.summary(summary, output if output != "-" else "stdout", kept=store.previous)
    if summary.stopped:
        raise summary.stopped
    raise typer.Exit(summary.exit_code)


def _question(prompt: str | None, prompt_file: Path | None) -> str:
    if prompt and prompt_file:
        raise UserError("give --prompt or --prompt-file, not both")
    if prompt_file:
        try:
            prompt = prompt_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise UserError(f"{prompt_file}: cannot read ({e.strerror or e})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"--prompt-file {prompt_file}: not UTF-8 text (byte {e.start})") from None
        if not prompt:
            raise UserError(f"{prompt_file}: the prompt file is empty")
    if not prompt or not prompt.strip():
        raise UserError("give the question with --prompt or --prompt-file")
    return prompt
