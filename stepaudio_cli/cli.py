"""The `stepaudio` command: assembles the commands; nothing heavy is imported here.

One Terminal is made at the root and handed down (``ctx.obj``, read with
``commands.options.terminal()``); every command runs inside one error boundary that turns a
UserError (EngineError, AudioError, ...) into ``error: <message>`` and its exit code, and
Ctrl-C into exit 130. Commands never catch these themselves.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import typer

from stepaudio_cli import __version__
from stepaudio_cli.commands.ask import ask
from stepaudio_cli.commands.batch import batch
from stepaudio_cli.commands.bench import bench
from stepaudio_cli.commands.options import terminal
from stepaudio_cli.commands.config import config_app
from stepaudio_cli.commands.doctor import doctor
from stepaudio_cli.commands.download import download
from stepaudio_cli.commands.ps import ps, stop
from stepaudio_cli.commands.serve import serve
from stepaudio_cli.errors import UserError

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


def command(fn: Callable) -> Callable:
    """A command inside the error boundary (every command takes ``ctx`` first)."""

    @functools.wraps(fn)
    def run(ctx: typer.Context, *args, **kwargs):
        with error_boundary(ctx):
            return fn(ctx, *args, **kwargs)

    return run


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


app.command(no_args_is_help=True)(command(ask))
app.command(no_args_is_help=True)(command(batch))
app.command()(command(download))
app.command()(command(doctor))
app.command()(command(bench))
app.command()(command(ps))
app.command()(command(stop))
app.add_typer(config_app, name="config")
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command(serve))
for _sub in config_app.registered_commands:
    _sub.callback = command(_sub.callback)


def main() -> None:
    # A fixed name: completions (_STEPAUDIO_COMPLETE) and messages read the same under
    # `python -m stepaudio_cli` as under the console script.
    app(prog_name="stepaudio")
