"""stepaudio config show | path"""

from __future__ import annotations

from typing import Annotated

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.errors import UserError

config_app = typer.Typer(help="Show the effective settings and where each one comes from.", no_args_is_help=True)

SECRET = {"api_key", "token"}


@config_app.command("show")
@options.takes(options.JSON)
def show(
    ctx: typer.Context,
    command: Annotated[
        str, typer.Option("--command", "-c", help="Whose settings: a command's name (ask, batch, serve, ...).")
    ] = "ask",
    *,
    json_output: bool,
) -> None:
    """Effective settings of a command: value and source (env, config file or default)."""
    from stepaudio_cli import config_file

    term = options.terminal(ctx)
    root = ctx.find_root()
    commands = config_file.configurable(root.command)
    if command not in commands:
        raise UserError(f"no command {command!r} (one of: {', '.join(commands)})")
    cmd = root.command.commands[command]  # type: ignore[attr-defined]
    sub = cmd.make_context(command, [], parent=root, resilient_parsing=True)
    rows: dict[str, dict] = {}
    path = config_file.config_path()
    for param in cmd.params:
        if param.param_type_name != "option" or param.name == "help" or param.hidden:
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
        rows[config_file.flag(param)] = {"value": shown, "source": where}
    if json_output:
        term.print_json(rows)
        return
    table = [(name, ["" if r["value"] is None else str(r["value"]), r["source"]]) for name, r in rows.items()]
    if not term.out.is_terminal:  # for scripts: whole values, one tab-separated line each (no table cuts)
        term.write_out(
            "".join("\t".join([name, *cells]) + "\n" for name, cells in [("setting", ["value", "source"]), *table])
        )
        return
    term.table(None, table, ["value", "source"], first="setting", plain=True)


@config_app.command("path")
def path(ctx: typer.Context) -> None:
    """Print the config file's path (STEPAUDIO_CONFIG, else XDG_CONFIG_HOME/stepaudio/config.toml)."""
    from stepaudio_cli import config_file

    options.terminal(ctx).write_out(f"{config_file.config_path()}\n")
