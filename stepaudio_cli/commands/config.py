"""stepaudio config show | path"""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import common
from stepaudio_cli.terminal import Terminal

config_app = typer.Typer(help="Show the effective settings and where each one comes from.", no_args_is_help=True)

SECRET = {"api_key", "token"}


@config_app.command("show")
def show(
    ctx: typer.Context,
    command: Annotated[str, typer.Option("--command", "-c", help="Whose settings: ask, batch, serve, download.")] = "ask",
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object: setting -> {value, source}.")] = False,
) -> None:
    """Effective settings of a command: value and source (env, config file or default)."""
    from rich.table import Table

    from stepaudio_cli import config

    term = Terminal()
    with common.user_errors(term):
        root = ctx.find_root()
        cmd = root.command.commands.get(command)  # type: ignore[attr-defined]
        if cmd is None or command not in config.COMMANDS:
            raise common.UserError(f"no command {command!r} (one of: {', '.join(config.COMMANDS)})")
        sub = cmd.make_context(command, [], parent=root, resilient_parsing=True)
        table = Table("setting", "value", "source", box=None, pad_edge=False)
        rows: dict[str, dict] = {}
        path = config.config_path()
        for param in cmd.params:
            if param.param_type_name != "option" or param.name in ("help",):
                continue
            value = sub.params.get(param.name)
            # By name: Typer may carry its own copy of click's ParameterSource enum.
            source = getattr(sub.get_parameter_source(param.name), "name", "DEFAULT")
            where = {
                "ENVIRONMENT": f"env {param.envvar}" if isinstance(param.envvar, str) else "env",
                "DEFAULT_MAP": f"config {path}",
                "COMMANDLINE": "command line",
            }.get(source, "default")
            shown = "***" if param.name in SECRET and value else value
            rows[f"--{param.name.replace('_', '-')}"] = {"value": shown, "source": where}
            table.add_row(f"--{param.name.replace('_', '-')}", "" if shown is None else str(shown), where)
        if json_output:
            term.print_json(rows)
        else:
            term.out.print(table)


@config_app.command("path")
def path() -> None:
    """Print the config file's path (STEPAUDIO_CONFIG, else XDG_CONFIG_HOME/stepaudio/config.toml)."""
    from stepaudio_cli import config

    Terminal().write_out(f"{config.config_path()}\n")
