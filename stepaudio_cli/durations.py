"""Durations as users write them (``90s``, ``20m``, ``1h30m``, ``1:30:00``) and as we show them."""

from __future__ import annotations

import re

from stepaudio_cli.errors import UserError


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


MAX_DURATION_SECONDS = 100 * 365 * 86400  # a duration past this is a typo (or 400 nines)
_NUMBER = r"(\d+(?:\.\d+)?)"
#: Units in the order they are written (1d2h30m, 1h30m, 90s, 90, 500ms): a bare number is seconds.
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m(?!s)", 60.0), ("s?", 1.0), ("ms", 0.001))
_DURATION = re.compile("".join(rf"(?:{_NUMBER}(?![\d.])\s*{unit}\s*)?" for unit, _ in _UNITS))


def parse_duration(text: str | float, flag: str, examples: str) -> float:
    """Seconds in ``90``, ``90s``, ``20m``, ``1h30m``, ``1.5h``, ``2d``, ``500ms``, ``1:30`` or
    ``1:30:00`` (a leading ``-``: negative); else one error line naming ``flag`` and ``examples``."""
    t = str(text).strip().lower()
    sign, body = (-1.0, t[1:].strip()) if t.startswith("-") else (1.0, t)
    seconds = None
    if ":" in body:
        parts = body.split(":")
        if len(parts) <= 3 and all(re.fullmatch(_NUMBER, p) for p in parts):
            seconds = sign * sum(float(p) * 60**i for i, p in enumerate(reversed(parts)))
    elif (m := _DURATION.fullmatch(body)) and any(m.groups()):
        seconds = sign * sum(float(g) * scale for g, (_, scale) in zip(m.groups(), _UNITS) if g)
    if seconds is None:
        raise UserError(f"{flag} {text!r}: not a duration (e.g. {examples})")
    if not abs(seconds) <= MAX_DURATION_SECONDS:
        shown = str(text) if len(str(text)) <= 24 else str(text)[:20] + "..."
        raise UserError(f"{flag} {shown!r}: out of range (at most {MAX_DURATION_SECONDS // (365 * 86400)} years)")
    return seconds
