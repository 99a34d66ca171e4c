"""The `stepaudio` command: assembles the commands; nothing heavy is imported here."""

from __future__ import annotations

import typer

from stepaudio_cli import __version__
from stepaudio_cli.commands.ask import ask
from stepaudio_cli.commands.batch import batch
from stepaudio_cli.commands.bench import bench
from stepaudio_cli.commands.config import config_app
from stepaudio_cli.commands.doctor import doctor
from stepaudio_cli.commands.download import download
from stepaudio_cli.commands.serve import serve

app = typer.Typer(
    name="stepaudio",
    help="Audio reasoning with Step-Audio-R1: ask questions about audio, in-process on vLLM or against a server.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


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
    from stepaudio_cli import config
    from stepaudio_cli.errors import UserError
    from stepaudio_cli.terminal import Terminal

    try:
        ctx.default_map = config.click_default_map(ctx.command)
    except UserError as e:
        Terminal().error(e.message)
        raise typer.Exit(2) from None


app.command(no_args_is_help=True)(ask)
app.command(no_args_is_help=True)(batch)
app.command()(download)
app.command()(doctor)
app.command()(bench)
app.add_typer(config_app, name="config")
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)


def main() -> None:
    # A fixed name: completions (_STEPAUDIO_COMPLETE) and messages read the same under
    # `python -m stepaudio_cli` as under the console script.
    app(prog_name="stepaudio")
