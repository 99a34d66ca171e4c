"""stepaudio serve [MODEL] [-- EXTRA_VLLM_ARGS...]"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MODEL
from stepaudio_cli.errors import UserError

if TYPE_CHECKING:
    from stepaudio_cli.engines.settings import EngineSettings


@options.takes(
    options.ENGINE,
    (options.BY_NAME["api_key"],),
    leave_out=("keep_alive", "sleep_for"),  # serve's own --keep-alive: stop when idle (idle_stop below)
    vary=[
        options.MODEL.vary(
            argument=True,
            type=str,
            default=DEFAULT_MODEL,
            help="Local path or hub repo id (downloaded already).",
            panel=None,
        ),
        options.BY_NAME["max_model_len"].vary(
            type=int | None,
            default=None,
            help="Context length (default: the most the KV cache holds, up to the model's maximum).",
        ),
        options.BY_NAME["api_key"].vary(
            panel=None,
            help="Require this bearer token on /v1 requests. On the command line it is visible to other "
            "users of the machine (ps): prefer STEPAUDIO_API_KEY or --api-key-file.",
        ),
    ],
)
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(envvar="STEPAUDIO_HOST", help="Address to bind; 0.0.0.0 exposes it.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="STEPAUDIO_PORT", min=1, max=65535)] = 9999,
    api_key_file: Annotated[
        Path | None, typer.Option(help="Read the bearer token from this file (its first line).")
    ] = None,
    insecure_no_key: Annotated[
        bool,
        typer.Option(
            "--insecure-no-key",
            help="Serve beyond loopback (--host) without a key: anyone who can reach the port can use it.",
        ),
    ] = False,
    raw_reasoning: Annotated[
        bool,
        typer.Option(
            "--raw-reasoning",
            envvar="STEPAUDIO_RAW_REASONING",
            help="Send reasoning, </think> and answer all in `content`, as StepFun's server does "
            "(for clients that split the text themselves, like StepFun's own examples).",
        ),
    ] = False,
    log_file: Annotated[Path | None, typer.Option(help="Where vLLM's log goes (default: the cache folder).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show vLLM's log on the terminal.")] = False,
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for /health.")] = 1800.0,
    idle_stop: Annotated[
        str | None,
        typer.Option(
            "--keep-alive", help="Stop after this long without requests (e.g. 30m; default: run until stopped)."
        ),
    ] = None,
    *,
    engine: EngineSettings,
) -> None:
    """Start vLLM's OpenAI-compatible server for Step-Audio-R1 (arguments after `--` go to vLLM)."""
    from stepaudio_cli import serve as core
    from stepaudio_cli.resident import parse_keep_alive, user_serve
    from stepaudio_cli.vllm_log import engine_log_path

    term = options.terminal(ctx)
    api_key = engine.api_key
    if api_key_file is not None:
        if api_key:
            raise UserError("give --api-key (or STEPAUDIO_API_KEY) or --api-key-file, not both")
        api_key = read_key_file(api_key_file)
    opts = core.ServeOptions(
        engine=engine,
        host=host,
        port=port,
        api_key=api_key,
        raw_reasoning=raw_reasoning,
        extra=list(ctx.args),
        insecure_no_key=insecure_no_key,
    )
    keep_alive = None if idle_stop is None else parse_keep_alive(idle_stop)
    log = log_file or engine_log_path(f"serve-{port}.log")

    def ready(running: core.Running) -> None:
        url = running.url
        how = "as asked" if engine.max_model_len else "the most the KV cache holds, up to the model's maximum"
        term.success(f"Step-Audio-R1 server ready at {url}/v1 (context {running.context} tokens: {how})")
        key = "STEPAUDIO_API_KEY=... " if api_key else ""
        term.info(f'Try: {key}stepaudio ask --server {url} clip.wav "What is happening in this audio?"')
        if not verbose:
            term.info(f"Server log: {log}. Ctrl-C stops it.")

    hooks = user_serve.hooks(opts, keep_alive, on_status=term.status_line(), on_ready=ready)
    code = core.run(opts, hooks, log_path=log, passthrough=verbose, ready_timeout=ready_timeout)
    raise typer.Exit(code)


def read_key_file(path: Path) -> str:
    """The first line of ``path``, which must hold a key."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"--api-key-file {path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"--api-key-file {path}: not UTF-8 text") from None
    key = text.strip().split("\n", 1)[0].strip() if text.strip() else ""
    if not key:
        raise UserError(f"--api-key-file {path}: the file is empty")
    return key
