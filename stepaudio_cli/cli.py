"""The `stepaudio` command: assembles the commands; nothing heavy is imported here.

One Terminal is made at the root and handed down (``ctx.obj``, read with
``commands.options.terminal()``); every command runs inside one error boundary that turns a
UserError (EngineError, AudioError, ...) into ``error: <message>`` and its exit code,
Ctrl-C into exit 130, a stdout pipe its reader closed (``| head``) into a quiet exit 141, and
anything unexpected (a bug) into one line, exit 70, with the full traceback in a file under
the XDG state folder (``STEPAUDIO_DEBUG=1`` prints it instead).
Commands never catch these themselves.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator

import click
import typer

from stepaudio_cli import __version__
from stepaudio_cli.commands.ask import ask
from stepaudio_cli.commands.batch import batch
from stepaudio_cli.commands.bench import bench
from stepaudio_cli.commands.chat import chat
from stepaudio_cli.commands.config import config_app
from stepaudio_cli.commands.doctor import doctor
from stepaudio_cli.commands.download import download
from stepaudio_cli.commands.logs import logs
from stepaudio_cli.commands.mcp import mcp
from stepaudio_cli.commands.options import terminal
from stepaudio_cli.commands.ps import ps, stop
from stepaudio_cli.commands.serve import serve
from stepaudio_cli.errors import UserError

INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug of ours, not the user's input
READER_GONE = 141  # 128 + SIGPIPE: what a shell reports for a process its pipe's reader left (`| head`)

app = typer.Typer(
    name="stepaudio",
    help="Audio reasoning with Step-Audio-R1: ask questions about audio, in-process on vLLM or against a server.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


@contextlib.contextmanager
def error_boundary(ctx: typer.Context) -> Iterator[None]:
    """The one place user errors and Ctrl-C become a message and an exit code."""
    try:
        yield
    except UserError as e:
        terminal(ctx).error(e.message)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        terminal(ctx).error("interrupted")  # after any streamed text, on a line of its own
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
        raise  # click's and typer's own ways out: usage errors, --help, an exit code
    except Exception as e:  # noqa: BLE001 - a bug: one line, the trace kept for the report
        if isinstance(e, BrokenPipeError) and _stdout_reader_gone():
            raise typer.Exit(READER_GONE) from None  # quietly, as SIGPIPE would end it
        if os.environ.get("STEPAUDIO_DEBUG"):
            traceback.print_exc()
            where = "traceback above"
        else:
            where = _save_traceback(e)
        text = " ".join(str(e).split())[:200]
        terminal(ctx).error(f"internal error: {type(e).__name__}{': ' + text if text else ''} ({where})")
        raise typer.Exit(INTERNAL_ERROR) from None


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (`stepaudio ... | head`). If so,
    stdout is pointed at /dev/null so that what is still buffered cannot fail again at exit."""
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
        if gone:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, fd)
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured, closed)
        return False
    return gone


def _save_traceback(e: BaseException) -> str:
    """Write ``e``'s traceback under ``$XDG_STATE_HOME/stepaudio`` and say where."""
    from pathlib import Path

    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "stepaudio"
    name = f"traceback-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        base.mkdir(parents=True, exist_ok=True)
        with open(base / name, "x", encoding="utf-8") as f:
            f.write(f"stepaudio {__version__}, python {sys.version.split()[0]}, argv {_redacted_argv()}\n")
            f.write("".join(traceback.format_exception(e)))
    except OSError as err:
        return f"the traceback could not be saved ({err.strerror or err}); STEPAUDIO_DEBUG=1 shows it"
    return f"traceback in {base / name}; STEPAUDIO_DEBUG=1 shows it"


SECRET_OPTIONS = ("--api-key", "--token")  # options whose value is a secret


def _redacted_argv(argv: list[str] | None = None) -> list[str]:
    """The command line with the values of secret options left out."""
    out, hide = [], False
    for arg in sys.argv if argv is None else argv:
        name = arg.split("=", 1)[0]
        if hide:
            out.append("***")
        elif name in SECRET_OPTIONS and "=" in arg:
            out.append(name + "=***")
        else:
            out.append(arg)
        hide = arg in SECRET_OPTIONS
    return out


def command(fn: Callable) -> Callable:
    """A command inside the error boundary (every command takes ``ctx`` first)."""

    @functools.wraps(fn)
    def run(ctx: typer.Context, *args, **kwargs):
        with error_boundary(ctx):
            _refuse_non_finite(ctx, kwargs)
            return fn(ctx, *args, **kwargs)

    return run


MAX_FLAG_INT = 2**63 - 1  # a whole number past a 64-bit integer is no count, seed or size


def _refuse_non_finite(ctx: typer.Context, values: dict) -> None:
    """``inf`` and ``nan`` parse as floats but mean nothing as a temperature or a timeout; a
    whole number past 64 bits (400 nines) fits no engine, seed or count: usage errors (exit 2)."""
    for param in ctx.command.params:
        value = values.get(param.name)
        flag = max(param.opts, key=len) if param.opts else param.name
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{flag}: {value} is not a finite number")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_FLAG_INT:
            raise UserError(f"{flag}: {str(value)[:12]}... is out of range (at most {MAX_FLAG_INT})")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"stepaudio {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Audio reasoning with Step-Audio-R1."""
    from stepaudio_cli import config_file
    from stepaudio_cli.terminal import Terminal

    ctx.obj = Terminal()
    with error_boundary(ctx):
        ctx.default_map = config_file.click_default_map(ctx.command)


def examples(*lines: str) -> str:
    """A command's --help ends with a few examples (one per line, as typed)."""
    return "[bold]Examples[/bold]\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


app.command(
    no_args_is_help=True,
    epilog=examples(
        'stepaudio ask clip.wav "What is happening?"',
        'stepaudio ask a.wav b.mp3 "Which one is the real piano?"',
        'cat call.ogg | stepaudio ask - "Summarise the call" --hide-reasoning',
        'stepaudio ask --json clip.wav "Transcribe it" | jq -r .answer',
        'stepaudio ask --server http://127.0.0.1:9999 clip.wav "Who is speaking?"',
    ),
)(command(ask))
app.command(
    epilog=examples(
        "stepaudio chat meeting.m4a",
        "stepaudio chat --server http://127.0.0.1:9999",
        "stepaudio chat -c   # go on with the latest conversation",
    )
)(command(chat))
app.command(
    no_args_is_help=True,
    epilog=examples(
        'stepaudio batch recordings/ -r --prompt "Is the speaker angry?" -o results.jsonl',
        'stepaudio batch recordings/ --prompt "..." -o results.jsonl   # again: resumes',
        'stepaudio batch calls/ -p "..." -o out.csv -f csv --server http://gpu1:9999 --server http://gpu2:9999',
    ),
)(command(batch))
app.command(
    epilog=examples(
        "stepaudio download",
        "stepaudio download --local-dir /data/sar1",
        "stepaudio download --check",
    )
)(command(download))
app.command(epilog=examples("stepaudio doctor", "stepaudio doctor --quantization fp8 --max-model-len 32768"))(
    command(doctor)
)
app.command(
    epilog=examples(
        "stepaudio bench",
        "stepaudio bench --quantization bf16 --quantization fp8 --concurrency 32",
        "stepaudio bench --model /data/sar1 --json",
    )
)(command(bench))
app.command(epilog=examples("stepaudio mcp", "stepaudio mcp --server http://gpu1:9999"))(command(mcp))
app.command(
    epilog=examples(
        "stepaudio logs",
        "stepaudio logs -n 3 --json",
        'stepaudio logs -q "budget NOT forecast"',
        "stepaudio logs --conversation 3f2a9c1d07be",
    )
)(command(logs))
app.command(epilog=examples("stepaudio ps"))(command(ps))
app.command(
    epilog=examples("stepaudio stop --all", "stepaudio stop stepfun-ai/Step-Audio-R1", "stepaudio stop serve-9999")
)(command(stop))
app.add_typer(config_app, name="config")
app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog=examples(
        "stepaudio serve",
        "stepaudio serve --quantization fp8 --max-model-len 16384",
        'STEPAUDIO_API_KEY="$KEY" stepaudio serve --host 0.0.0.0',
        "stepaudio serve /data/sar1 -- --enable-prefix-caching",
    ),
)(command(serve))
for _sub in config_app.registered_commands:
    _sub.callback = command(_sub.callback)


def main() -> None:
    # A fixed name: completions (_STEPAUDIO_COMPLETE) and messages read the same under
    # `python -m stepaudio_cli` as under the console script.
    app(prog_name="stepaudio")
