"""The `stepaudio` command: assembles the commands; nothing heavy is imported here."""

from __future__ import annotations

import typer

from stepaudio_cli import __version__
from stepaudio_cli.commands.ask import ask
from stepaudio_cli.commands.batch import batch
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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Audio reasoning with Step-Audio-R1."""


app.command(no_args_is_help=True)(ask)
app.command(no_args_is_help=True)(batch)
app.command()(download)
app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(serve)


def main() -> None:
    app()
