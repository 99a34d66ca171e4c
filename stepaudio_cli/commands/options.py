"""What commands do with the shared options (declared once in :mod:`shared_options`, re-exported
here): :func:`takes` gives a command the groups it takes beside its own options and hands it the
typed values built from them (:data:`TYPED`: ``engine``, ``sampling``, ``thinking``,
``windowing``, ``keep_alive``, ...), keyword-only parameters it lists after ``*``; a command never
declares a parameter named like a shared option (refused when the app is built). Also the root
Terminal.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable

import typer

from stepaudio_cli.commands.shared_options import (
    BY_NAME,
    CONVERSATION,
    ENGINE,
    ENGINE_PANEL,
    JSON,
    LONG_RECORDINGS,
    MODEL,
    REASONING,
    REMOTE,
    SAMPLING,
    URLS,
    VIEW,
    Shared,
)
from stepaudio_cli.defaults import DEFAULT_MODEL
from stepaudio_cli.terminal import Terminal

__all__ = [
    "BY_NAME",
    "CONVERSATION",
    "ENGINE",
    "ENGINE_PANEL",
    "JSON",
    "LONG_RECORDINGS",
    "MODEL",
    "REASONING",
    "REMOTE",
    "SAMPLING",
    "TYPED",
    "URLS",
    "VIEW",
    "Shared",
    "engine_settings",
    "takes",
    "terminal",
]


# --- the typed values a command receives -------------------------------------------------------


def engine_settings(values: dict):
    """The engine settings from the parsed values of shared options: every one named like an
    :class:`EngineSettings` field goes to that field (``server`` and ``model`` are read as the
    remote/in-process pair); with the reasoning options, the reasoning-length processor is
    loaded when they limit the reasoning. Fields not given keep their defaults."""
    from stepaudio_cli.engines.settings import EngineSettings

    servers = EngineSettings.split_servers(values.get("server"))
    model = values.get("model")
    names = {f.name for f in dataclasses.fields(EngineSettings)} - {"servers", "model", "served_model"}
    given = {k: v for k, v in values.items() if k in names}
    if TYPED["thinking"].reads <= values.keys():
        given["thinking_processor"] = _thinking(values).constrained
    return EngineSettings(
        servers=servers,
        model=(None if servers else model) or DEFAULT_MODEL,
        served_model=model if servers else None,
        **given,
    )


def _sampling(values: dict):
    from stepaudio_cli.request import Sampling

    return Sampling(
        temperature=values["temperature"], top_p=values["top_p"], max_tokens=values["max_tokens"], seed=values["seed"]
    )


def _thinking(values: dict):
    from stepaudio_cli.request import Thinking

    return Thinking.from_options(values["think_budget"], values["min_think"], values["effort"], values["no_think"])


def _conversation(values: dict):
    from stepaudio_cli.commands.conversations import ConversationChoice

    return ConversationChoice(values["log"], values.get("continue_conversation", False), values.get("conversation"))


def _url_fetching(values: dict):
    from stepaudio_cli.url_audio import UrlFetching

    return UrlFetching(use_cache=not values["no_cache"])


def _windowing(values: dict):
    from stepaudio_cli.windows import Windowing

    return Windowing.from_options(values["window"], values["no_window"])


def _keep_alive(values: dict) -> float | None:
    from stepaudio_cli.resident import parse_keep_alive

    return parse_keep_alive(values["keep_alive"])


def _sleep_for(values: dict) -> float | None:
    from stepaudio_cli.resident import parse_keep_alive

    return parse_keep_alive(values["sleep_for"], "--sleep-for")


@dataclasses.dataclass(frozen=True)
class Typed:
    """A typed value built from shared options: those it ``reads`` (``partial``: whichever of
    them the command takes; else all of them) and how it is ``built`` from their values."""

    reads: frozenset[str]
    build: Callable[[dict], object]
    partial: bool = False


def _names(*groups: Iterable[Shared], but: Iterable[str] = ()) -> frozenset[str]:
    return frozenset(o.name for group in groups for o in group) - set(but)


#: What a command may receive, by parameter name: ``engine`` (EngineSettings), ``sampling``
#: (request.Sampling), ``thinking`` (request.Thinking), ``windowing`` (windows.Windowing),
#: ``keep_alive`` and ``sleep_for`` (seconds, None: forever), and the plain values of ``system``,
#: ``json_output`` and ``hide_reasoning``.
TYPED = {
    "engine": Typed(_names(REMOTE, ENGINE, but=("keep_alive", "sleep_for")), engine_settings, partial=True),
    "sampling": Typed(_names(SAMPLING, but=("system",)), _sampling),
    "thinking": Typed(_names(REASONING), _thinking),
    "windowing": Typed(_names(LONG_RECORDINGS), _windowing),
    "urls": Typed(_names(URLS), _url_fetching),
    "conversation": Typed(_names(CONVERSATION), _conversation, partial=True),  # mcp: --no-log alone
    "keep_alive": Typed(frozenset({"keep_alive"}), _keep_alive),
    "sleep_for": Typed(frozenset({"sleep_for"}), _sleep_for),
    **{
        name: Typed(frozenset({name}), lambda v, name=name: v[name])
        for name in ("system", "json_output", "hide_reasoning")
    },
}


def takes(
    *groups: Iterable[Shared],
    leave_out: Iterable[str] = (),
    only: Iterable[str] | None = None,
    vary: Iterable[Shared] = (),
):
    """A command that takes the options of ``groups`` (those named in ``only``, when given; not those
    in ``leave_out``; ``vary``: this command's variants of some of them, :meth:`Shared.vary`) besides
    its own, and receives them as the typed values (:data:`TYPED`) it lists as keyword-only
    parameters without a default: ``def ask(ctx, ..., *, engine: EngineSettings, sampling: Sampling)``.

    Refused (ValueError, when the app is built): a parameter of the command's own named like a
    shared option, or with a flag of one it takes (one name, one meaning); a typed value whose
    options it does not take; an option it takes that no typed value reads. In ``--help`` its own
    panels come first, then the groups' panels. The wrapper's ``shared_options`` lists the records
    it added, its ``typed_values(params)`` builds what the command receives from parsed values."""
    chosen = [o for group in groups for o in group]
    variants = {o.name: o for o in vary}
    left_out, picked = set(leave_out), None if only is None else set(only)
    unknown = (left_out | (picked or set()) | set(variants)) - {o.name for o in chosen}
    if unknown:  # a typo would silently take or drop an option
        raise ValueError(f"no shared option {', '.join(sorted(unknown))} in these groups")
    chosen = [
        variants.get(o.name, o) for o in chosen if o.name not in left_out and (picked is None or o.name in picked)
    ]

    def decorate(fn: Callable) -> Callable:
        own, typed = _split(fn)
        taken = {o.name for o in chosen}
        _refuse_clashes(fn.__name__, own, chosen)
        for name in typed:
            need = TYPED[name]
            if not (need.reads & taken if need.partial else need.reads <= taken):
                missing = ", ".join(sorted(need.reads - taken))
                raise ValueError(f"{fn.__name__}: `{name}` is built from options it does not take ({missing})")
        unread = taken - set().union(*(TYPED[name].reads for name in typed))
        if unread:  # an option that changes nothing
            raise ValueError(f"{fn.__name__}: takes {_flags(unread)} but receives no typed value built from it")
        params = _panel_by_panel(own, [o.parameter() for o in chosen])

        def typed_values(values: dict) -> dict:
            """What the command receives, from the parsed values of the shared options it takes."""
            given = {k: values[k] for k in taken}
            return {name: TYPED[name].build(given) for name in typed}

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {k: kwargs.pop(k) for k in taken}
            return fn(*args, **kwargs, **typed_values(values))

        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.shared_options = tuple(chosen)
        command.typed_values = typed_values
        return command

    return decorate


def _split(fn: Callable) -> tuple[list[inspect.Parameter], list[str]]:
    """``fn``'s own parameters (their annotations evaluated, as Typer reads them) and the names of
    the typed values it receives (keyword-only without a default; their annotations stay text, so
    a command module imports no settings classes for ``--help``)."""
    own, typed = [], []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty:
            if p.name not in TYPED:
                raise ValueError(f"{fn.__name__}: no typed value {p.name!r} (one of: {', '.join(TYPED)})")
            typed.append(p.name)
            continue
        annotation = eval(p.annotation, fn.__globals__) if isinstance(p.annotation, str) else p.annotation
        own.append(p.replace(annotation=annotation))
    return own, typed


def _refuse_clashes(command: str, own: list[inspect.Parameter], chosen: list[Shared]) -> None:
    """One name, one meaning: a command's own parameter named like a shared option, or with the
    flag of a shared option it takes, would silently shadow it."""
    for p in own:
        if p.name in BY_NAME:
            raise ValueError(
                f"{command}: declares {_flags([p.name])} itself; take the shared option (options.takes, "
                "with Shared.vary for its own default or help), or give its own meaning its own name"
            )
    taken_flags = {f: o.name for o in chosen for f in (o.flags or ("--" + o.name.replace("_", "-"),))}
    for p in own:
        for flag in _declared_flags(p):
            if flag in taken_flags:
                raise ValueError(f"{command}: {p.name} declares {flag}, the flag of the shared {taken_flags[flag]}")


def _declared_flags(p: inspect.Parameter) -> tuple[str, ...]:
    for m in getattr(p.annotation, "__metadata__", ()):
        if isinstance(m, typer.models.OptionInfo):
            given = tuple(d for d in (m.default, *m.param_decls) if isinstance(d, str) and d.startswith("-"))
            return given or ("--" + p.name.replace("_", "-"),)
    return ()


def _flags(names: Iterable[str]) -> str:
    """The flags a user types for these shared options (or for a name no option has, --name)."""
    return ", ".join(
        BY_NAME[n].flags[0] if n in BY_NAME and BY_NAME[n].flags else "--" + n.replace("_", "-") for n in sorted(names)
    )


def _panel_by_panel(own: list[inspect.Parameter], added: list[inspect.Parameter]) -> list[inspect.Parameter]:
    """``own`` then ``added``, options ordered by help panel (Typer shows panels in the order they
    first come): the default panel, the command's own panels, then the groups' ones. Everything
    after the first parameter (``ctx``) becomes keyword-only: Typer passes them all by name."""
    theirs = [_panel(p) for p in added]
    mine = [_panel(p) for p in own if _is_option(p) and _panel(p) not in theirs]
    panels = list(dict.fromkeys([None, *mine, *theirs]))
    first, rest = own[:1], own[1:] + added
    rest.sort(key=lambda p: panels.index(_panel(p)) if _is_option(p) else -1)
    return first + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]


def _is_option(p: inspect.Parameter) -> bool:
    return any(isinstance(m, typer.models.OptionInfo) for m in getattr(p.annotation, "__metadata__", ()))


def _panel(p: inspect.Parameter) -> str | None:
    return next((getattr(m, "rich_help_panel", None) for m in getattr(p.annotation, "__metadata__", ())), None)


def terminal(ctx: typer.Context) -> Terminal:
    """The one Terminal, made at the root of the command line and handed down as ``ctx.obj``."""
    root = ctx.find_root()
    if not isinstance(root.obj, Terminal):  # a command invoked on its own (no root callback)
        root.obj = Terminal()
    return root.obj
