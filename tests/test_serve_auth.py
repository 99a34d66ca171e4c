"""The key on every route of `stepaudio serve` but /health: the guard alone on tiny ASGI apps
(no vLLM), then every route the installed vLLM builds, walked against the real server."""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import socket
import subprocess
import sys
import typing
from types import SimpleNamespace

import httpx
import psutil
import pytest
from conftest import SCRIPT

from stepaudio_cli import serve as core
from stepaudio_cli.engines.settings import EngineSettings
from stepaudio_cli.vllm_plugin.route_guard import MIDDLEWARE, RouteGuard

KEY = "sekret"  # the `vllm_server` fixture's key


# --- the guard alone --------------------------------------------------------------------------


def run_guard(scope: dict, app_state: SimpleNamespace | None = None) -> tuple[list[dict], list[str]]:
    """What the guard sends for one request, and which scope types reached the app inside."""
    reached, sent = [], []

    async def inner(scope, receive, send):
        reached.append(scope["type"])

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    if app_state is not None:
        scope["app"] = SimpleNamespace(state=app_state)
    asyncio.run(RouteGuard(inner)(scope, receive, send))
    return sent, reached


def http(path: str, *headers: tuple[bytes, bytes], method: str = "POST", root_path: str = "") -> dict:
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": list(headers)}


def bearer(key: str) -> tuple[bytes, bytes]:
    return (b"authorization", b"Bearer " + key.encode())


def refused(sent: list[dict]) -> bool:
    start, body = sent
    headers = dict(start["headers"])
    return (
        start["status"] == 401
        and headers[b"www-authenticate"] == b"Bearer"
        and json.loads(body["body"])["error"]["code"] == 401
    )


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", KEY)
    return KEY


def test_without_a_key_everything_passes(monkeypatch):
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    assert run_guard(http("/invocations")) == ([], ["http"])


@pytest.mark.parametrize(
    "headers",
    [(), (bearer("wrong"),), (bearer(KEY + "x"),), ((b"authorization", b"Basic " + KEY.encode()),), (bearer(""),)],
)
@pytest.mark.parametrize("path", ["/invocations", "/tokenize", "/metrics", "/v1/chat/completions", "/healthz", "/"])
def test_a_request_without_the_right_key_is_refused(key, path, headers):
    sent, reached = run_guard(http(path, *headers))
    assert reached == [] and refused(sent)


def test_the_right_key_passes_whatever_the_scheme_s_case(key):
    for scheme in (b"Bearer", b"bearer", b"BEARER"):
        assert run_guard(http("/invocations", (b"Authorization", scheme + b" " + KEY.encode()))) == ([], ["http"])


def test_health_needs_no_key_under_a_root_path_too(key):
    assert run_guard(http("/health", method="GET")) == ([], ["http"])
    assert run_guard(http("/proxy/health", method="GET", root_path="/proxy")) == ([], ["http"])
    assert refused(run_guard(http("/proxy/tokenize", root_path="/proxy"))[0])
    assert refused(run_guard(http("/proxyhealth", method="GET", root_path="/proxy"))[0])


def test_only_a_cors_preflight_goes_through_as_options(key):
    preflight = http("/invocations", (b"origin", b"http://a.example"), (b"access-control-request-method", b"POST"))
    preflight["method"] = "OPTIONS"
    assert run_guard(preflight) == ([], ["http"])
    assert refused(run_guard(http("/invocations", (b"origin", b"http://a.example"), method="OPTIONS"))[0])


def test_a_websocket_without_the_key_is_refused_before_accept(key):
    scope = {"type": "websocket", "path": "/v1/realtime", "headers": []}
    sent, reached = run_guard({**scope, "extensions": {"websocket.http.response": {}}})
    assert reached == [] and [m["type"] for m in sent] == [f"websocket.http.response.{m}" for m in ("start", "body")]
    assert sent[0]["status"] == 401
    sent, reached = run_guard(dict(scope))  # a server without the denial-response extension
    assert reached == [] and sent == [{"type": "websocket.close", "code": 1008}]
    assert run_guard({**scope, "headers": [bearer(KEY)]}) == ([], ["websocket"])


def test_lifespan_passes_through(key):
    assert run_guard({"type": "lifespan"}) == ([], ["lifespan"])


def test_the_server_s_api_key_flags_win_over_the_environment_as_in_vllm(key):
    flags = SimpleNamespace(args=SimpleNamespace(api_key=["first", "second"]))
    assert refused(run_guard(http("/invocations", bearer(KEY)), flags)[0])
    assert run_guard(http("/invocations", bearer("second")), flags) == ([], ["http"])
    no_flag = SimpleNamespace(args=SimpleNamespace(api_key=None))
    assert run_guard(http("/invocations", bearer(KEY)), no_flag) == ([], ["http"])


def test_serve_adds_the_guard_to_vllm_and_it_imports_no_vllm(tmp_path):
    cmd = core.build_command(core.ServeOptions(engine=EngineSettings(model="stepfun-ai/Step-Audio-R1")), tmp_path, 0)
    assert cmd[cmd.index("--middleware") + 1] == MIDDLEWARE
    module, name = MIDDLEWARE.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is RouteGuard
    probe = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('vllm', 'torch')))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "[]\n"


# --- the real server: every route the installed vLLM builds --------------------------------------


def vllm_route_list(server_argv: list[str]) -> set[tuple[str, str]]:
    """(method, path) of every route vLLM's own ``build_app`` makes from the server's arguments,
    with every task vLLM knows enabled ("WS" for a websocket, "GET" under a mount)."""
    try:  # 0.32 on
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:  # 0.26 - 0.31
        from vllm.entrypoints.openai.api_server import build_app
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    from starlette.routing import Mount, WebSocketRoute
    from vllm import tasks
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    def literals(tp) -> list[str]:
        return [v for a in typing.get_args(tp) for v in (literals(a) if typing.get_args(a) else [a])]

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(server_argv)
    assert MIDDLEWARE in args.middleware
    app = build_app(args, tuple(literals(tasks.SupportedTask)))
    routes = set()
    for route in app.routes:
        if isinstance(route, WebSocketRoute):
            routes.add(("WS", route.path))
        elif isinstance(route, Mount):
            routes |= {("GET", route.path), ("GET", route.path + "/")}
        else:
            routes |= {(method, route.path) for method in route.methods}
    return routes


def server_argv(server) -> list[str]:
    """The vLLM command line `stepaudio serve` started, from the process itself."""
    child = next(p for p in psutil.Process(server.proc.pid).children() if "api_server" in " ".join(p.cmdline()))
    argv = child.cmdline()
    return argv[argv.index("vllm.entrypoints.openai.api_server") + 1 :]


def websocket_status(url: str, path: str, headers: dict[str, str]) -> int:
    host, port = httpx.URL(url).host, httpx.URL(url).port
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade"]
    lines += ["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(s.recv(1024).split(b" ", 2)[1])


def test_every_route_but_health_needs_the_key(vllm_server):
    url = vllm_server.url
    routes = vllm_route_list(server_argv(vllm_server))
    # And whatever the live server documents (a route a plugin or task adds there).
    schema = httpx.get(url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    routes |= {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert {("POST", "/invocations"), ("POST", "/tokenize"), ("GET", "/metrics"), ("GET", "/health")} <= routes
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, template in sorted(routes):
            path = re.sub(r"\{[^}]*\}", "x", template)
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                if method == "WS":
                    status = websocket_status(url, path, headers)
                    assert status in (401, 403), (path, headers, status)  # refused before the upgrade
                    continue
                status = client.request(method, path, headers=headers).status_code
                expected = 200 if path == "/health" and method in ("GET", "HEAD") else 401
                assert status == expected, (method, path, headers, status)


def test_with_the_key_tokenize_and_invocations_answer(vllm_server):
    auth = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=vllm_server.url, timeout=120) as client:
        model = client.get("/v1/models", headers=auth).json()["data"][0]["id"]
        tokens = client.post("/tokenize", json={"model": model, "prompt": "a beep"}, headers=auth)
        assert tokens.status_code == 200 and tokens.json()["tokens"]
        chat = {"model": model, "messages": [{"role": "user", "content": "What is happening?"}], "max_tokens": 64}
        reply = client.post("/invocations", json=chat, headers=auth)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == SCRIPT[1]
        # A browser's CORS preflight carries no key: vLLM's CORS layer answers it (by its
        # --allowed-origins: 0.32 allows none by default), no route runs.
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        answer = client.options("/invocations", headers=preflight)
        assert (answer.status_code, answer.text) in ((200, "OK"), (400, "Disallowed CORS origin")), answer.text
