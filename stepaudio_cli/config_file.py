"""Settings from ``config.toml``: the lowest layer under defaults < file < env < command line.

File: ``$STEPAUDIO_CONFIG``, else ``$XDG_CONFIG_HOME/stepaudio/config.toml``
(``~/.config/stepaudio/config.toml``)::

    # any option name (dashes or underscores), for every command that has it
    model = "/data/Step-Audio-R1"
    server = ["http://gpu1:9999", "http://gpu2:9999"]
    api_key_env = "MY_TEAM_KEY"     # read the API key from this variable
    temperature = 0.6
    think_budget = 1024

    [batch]                         # only for one command
    concurrency = 16

The values become click's ``default_map``, which click consults after the command line and
the ``STEPAUDIO_*`` variables, and before the built-in defaults: exactly the precedence wanted.
"""

from __future__ import annotations

import os
from pathlib import Path

from stepaudio_cli.errors import UserError


def config_path() -> Path:
    explicit = os.environ.get("STEPAUDIO_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "stepaudio" / "config.toml"


def load(path: Path | None = None) -> dict:
    path = path or config_path()
    if not path.is_file():
        if os.environ.get("STEPAUDIO_CONFIG"):
            raise UserError(f"{path}: no such config file (from STEPAUDIO_CONFIG)")
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a config file is TOML") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def _norm(key: str) -> str:
    return key.replace("-", "_")


def default_map(raw: dict, options: dict[str, set[str]], path: Path) -> dict[str, dict]:
    """``{command: {param: value}}`` for click, from the file's contents.

    ``options`` maps each command to its parameter names; unknown keys are errors, so a typo
    does not silently do nothing.
    """
    shared = {_norm(k): v for k, v in raw.items() if not isinstance(v, dict)}
    sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    for name in sections:
        if name not in options:
            raise UserError(f"{path}: unknown section [{name}] (commands: {', '.join(sorted(options))})")
    known = set().union(*options.values()) | {"api_key_env"}
    for key in shared:
        if key not in known:
            raise UserError(f"{path}: unknown setting {key!r}")
    result: dict[str, dict] = {}
    for command, params in options.items():
        values = {k: v for k, v in shared.items() if k in params}
        for k, v in sections.get(command, {}).items():
            k = _norm(k)
            if k not in params and k != "api_key_env":
                raise UserError(f"{path}: [{command}] has no setting {k!r}")
            values[k] = v
        env_name = values.pop("api_key_env", shared.get("api_key_env"))
        if env_name and "api_key" in params and "api_key" not in values and os.environ.get(str(env_name)):
            values["api_key"] = os.environ[str(env_name)]
        if isinstance(values.get("server"), str):
            values["server"] = [values["server"]]
        if values:
            result[command] = values
    return result


def configurable(group) -> dict[str, set[str]]:
    """The commands of ``group`` the file can configure (those with options; not groups like
    ``config`` itself), each with its parameter names."""
    return {
        name: {p.name for p in cmd.params if p.name != "help"}
        for name, cmd in group.commands.items()
        if not hasattr(cmd, "commands") and any(p.param_type_name == "option" for p in cmd.params)
    }


def click_default_map(group) -> dict[str, dict]:
    """The config file as click's ``default_map`` for the commands of ``group``."""
    commands = group.commands
    path = config_path()
    result = default_map(load(), configurable(group), path)
    for command, values in result.items():
        params = {p.name: p for p in commands[command].params}
        for key, value in values.items():
            _check_value(params[key], key, value, path)
    return result


def _check_value(param, key: str, value, path: Path) -> None:
    """A value from the file is of the option's type, as the file wrote it (``true`` is not a
    number, ``"5"`` is not an integer), and within the option's range; else one line that
    blames the file, not the option's environment variable."""
    import math
    import typing

    def wrong(why: str) -> UserError:
        import json

        shown = json.dumps(value, default=str) if not isinstance(value, float) else str(value)
        return UserError(f"{path}: {key} = {shown}: {why}")

    kind = param.type_descriptor.annotation
    items = [value]
    if typing.get_origin(kind) is list:
        kind = (typing.get_args(kind) or (str,))[0]
        items = value if isinstance(value, list) else [value]
    for item in items:
        if kind is bool:
            ok, want = isinstance(item, bool), "true or false"
        elif kind is int:
            ok, want = isinstance(item, int) and not isinstance(item, bool), "a whole number"
        elif kind is float:
            ok = isinstance(item, int | float) and not isinstance(item, bool) and math.isfinite(item)
            want = "a finite number"
        else:  # text; a number too where the option takes text (serve's -tp is a number or "auto")
            ok, want = isinstance(item, str | int | float) and not isinstance(item, bool), "a string"
        if not ok:
            raise wrong(f"want {want}")
        low, high = getattr(param, "min", None), getattr(param, "max", None)
        if (low is not None and item < low) or (high is not None and item > high):
            span = (
                f"{low} to {high}"
                if low is not None and high is not None
                else (f"at least {low}" if low is not None else f"at most {high}")
            )
            raise wrong(f"want {span}")
