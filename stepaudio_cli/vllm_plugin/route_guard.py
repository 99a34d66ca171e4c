"""The API key on every route of vLLM's OpenAI server, not only ``/v1``.

vLLM's own key check guards a few path prefixes (``/v1``, ...); ``/invocations`` (a full chat
completion), ``/tokenize``, ``/metrics`` and the rest answer anyone. `stepaudio serve` adds
:class:`RouteGuard` to the server with ``--middleware`` (:data:`MIDDLEWARE`): with a key, every
HTTP request and websocket handshake without ``Authorization: Bearer KEY`` is refused with 401,
except ``/health`` (ready checks) and CORS preflights (answered by vLLM's CORS layer inside this
one, never by a route). Without a key it passes everything through, as vLLM does.

The keys are the ones vLLM's own check uses, in its order: ``--api-key`` (the server's parsed
arguments, ``app.state.args``) if given, else ``VLLM_API_KEY`` (how serve passes the key). A pure
ASGI middleware: nothing is buffered, and importing it imports no vLLM.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

OPEN_PATHS = frozenset({"/health"})

_BODY = json.dumps(
    {
        "error": {
            "message": "a valid API key is required (header `Authorization: Bearer KEY`)",
            "type": "authentication_error",
            "code": 401,
        }
    }
).encode()
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"www-authenticate", b"Bearer"),
]


class RouteGuard:
    """ASGI middleware: vLLM instantiates it as ``RouteGuard(app)`` (``app.add_middleware``)."""

    def __init__(self, app) -> None:
        self.app = app
        self._digests: list[bytes] | None = None  # read at the first request: the app's args exist then

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": _BODY})
        elif "websocket.http.response" in scope.get("extensions", {}):  # refused before accept, as 401
            await send({"type": "websocket.http.response.start", "status": 401, "headers": _HEADERS})
            await send({"type": "websocket.http.response.body", "body": _BODY})
        else:  # a server without that extension answers a close before accept with 403
            await send({"type": "websocket.close", "code": 1008})

    def _allowed(self, scope) -> bool:
        if self._digests is None:
            self._digests = [_digest(key.encode()) for key in server_keys(scope.get("app"))]
        if not self._digests or route_path(scope) in OPEN_PATHS or _is_preflight(scope):
            return True
        token = _bearer(_header(scope, b"authorization"))
        if token is None:
            return False
        given = _digest(token)
        # Every key compared, equal-length digests: the time says nothing about the key.
        return any([hmac.compare_digest(given, digest) for digest in self._digests])


def server_keys(app) -> list[str]:
    """vLLM's keys: its ``--api-key`` values, else ``VLLM_API_KEY``; empty ones dropped."""
    args = getattr(getattr(app, "state", None), "args", None)
    keys = getattr(args, "api_key", None) or [os.environ.get("VLLM_API_KEY")]
    if isinstance(keys, str):  # one key, as a release before the list form spelled it
        keys = [keys]
    return [key for key in keys if isinstance(key, str) and key]


def route_path(scope) -> str:
    """The path the router matches: ``path`` less the ``root_path`` it starts with (Starlette's rule)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root) :]
    return path


def _is_preflight(scope) -> bool:
    return (
        scope.get("method") == "OPTIONS"
        and _header(scope, b"origin") is not None
        and _header(scope, b"access-control-request-method") is not None
    )


def _header(scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


def _bearer(value: bytes | None) -> bytes | None:
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")  # as vLLM's own check splits it
    return token if scheme.lower() == b"bearer" else None


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


#: The ``--middleware`` value that installs the guard.
MIDDLEWARE = f"{__name__}.{RouteGuard.__qualname__}"
