"""Settings from ``config.toml``: the lowest layer under defaults < file < env < command line.

File: ``$STEPAUDIO_CONFIG``, else ``$XDG_CONFIG_HOME/stepaudio/config.toml``
(``~/.config/stepaudio/config.toml``)::

    # any option by its flag (dashes or underscores), for every command that has it
    model = "/data/Step-Audio-R1"
    server = ["http://gpu1:9999", "http://gpu2:9999"]
    api_key_env = "MY_TEAM_KEY"     # read the API key from this variable
    temperature = 0.6
    think_budget = 1024

    [batch]                         # only for one command
    concurrency = 16

A key is an option's long flag (``format`` for ``--format``); the only argument it sets is the
shared model (``serve``'s MODEL). An option that means something else in one command than at the
top level (:data:`SECTION_ONLY`) is set only in that command's section. The values become click's
``default_map`` (by parameter name), which click consults after the command line and the
``STEPAUDIO_*`` variables, and before the built-in defaults: exactly the precedence wanted.
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


#: Keys that mean something else in one command than at the top level, set only in its section:
#: ``serve``'s --keep-alive stops an idle server, the top level's keeps `ask`'s and `batch`'s engine.
SECTION_ONLY = {"serve": {"keep_alive"}}


def _norm(key: str) -> str:
    return key.replace("-", "_")


def flag(param) -> str:
    """What a user types for a click parameter: an option's first long flag, an argument's name."""
    return next((o for o in param.opts if o.startswith("--")), param.name)


def _keys(param) -> list[str]:
    """The keys the file names a parameter by: an option's long flags, an argument's name."""
    return [_norm(o.removeprefix("--")) for o in param.opts if o.startswith("--")] or [param.name]


def default_map(raw: dict, options: dict[str, dict[str, str]], path: Path) -> dict[str, dict]:
    """``{command: {param: value}}`` for click, from the file's contents.

    ``options`` maps each command to its keys, each to the parameter it sets (:func:`configurable`);
    unknown keys are errors, so a typo does not silently do nothing.
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
    for command, keys in options.items():
        top = {k: v for k, v in shared.items() if k in keys and k not in SECTION_ONLY.get(command, ())}
        values = {keys[k]: v for k, v in top.items()}
        env_name = shared.get("api_key_env")
        for k, v in sections.get(command, {}).items():
            k = _norm(k)
            if k == "api_key_env":
                env_name = v
            elif k in keys:
                values[keys[k]] = v
            else:
                raise UserError(f"{path}: [{command}] has no setting {k!r}")
        has_key = "api_key" in keys.values() and "api_key" not in values
        if env_name and has_key and os.environ.get(str(env_name)):
            values["api_key"] = os.environ[str(env_name)]
        if isinstance(values.get("server"), str):
            values["server"] = [values["server"]]
        if values:
            result[command] = values
    return result


def configurable(group) -> dict[str, dict[str, str]]:
    """The commands of ``group`` the file can configure (those with options; not groups like
    ``config`` itself), each with its keys and the parameter each sets: every option by its long
    flags, and an argument that is a shared option (``serve``'s MODEL)."""
    result = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands") or not any(p.param_type_name == "option" for p in cmd.params):
            continue
        shared = {o.name for o in getattr(cmd.callback, "shared_options", ())}
        result[name] = {
            key: p.name
            for p in cmd.params
            if p.name != "help" and (p.param_type_name == "option" or p.name in shared)
            for key in _keys(p)
        }
    return result


def click_default_map(group) -> dict[str, dict]:
    """The config file as click's ``default_map`` for the commands of ``group``."""
    commands = group.commands
    path = config_path()
    result = default_map(load(), configurable(group), path)
    for command, values in result.items():
        params = {p.name: p for p in commands[command].params}
        for name, value in values.items():
            _check_value(params[name], _keys(params[name])[0], value, path)
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
