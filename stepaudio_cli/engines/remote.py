"""Remote engine: any OpenAI-compatible chat-completions server, streamed over SSE."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx

from stepaudio_cli.checkpoint import EOT
from stepaudio_cli.defaults import DEFAULT_TIMEOUT, UDS_SCHEME
from stepaudio_cli.engines.base import Engine, Final
from stepaudio_cli.engines.reasoning_length import PhaseEnd, Run, Text, phased
from stepaudio_cli.engines.replies import parse_chunk, parse_model_list, parse_tokens, reply_json, server_message
from stepaudio_cli.errors import EngineError, UserError
from stepaudio_cli.prompt import build_messages
from stepaudio_cli.request import Request, max_tokens_to_send
from stepaudio_cli.splitter import Delta
from stepaudio_cli.vllm_plugin import thinking_args

CONNECT_TIMEOUT = 10.0
PROBE_TIMEOUT = 15.0  # a health probe (model list, tokenizer) answers at once on a live server
# Tokens a reply may take when neither --max-tokens nor the server's context says: twice
# R1.1's 65,536 positions, so a server that streams without end is stopped all the same.
UNKNOWN_CONTEXT = 131_072
# The longest line of a stream kept in memory: a chunk holds a token or a few (vLLM's are ~300
# bytes), the usage chunk a little more; a server sending a line without end is stopped here.
MAX_LINE_BYTES = 1 << 20
_LINE_END = re.compile(rb"\r\n|\r|\n")


_USERINFO = re.compile(r"(?<=//)[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of any URL in it (``http://user:pass@host``) hidden."""
    return _USERINFO.sub("***@", text)


def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``http://host:port/v1``; a URL that
    cannot be one (a bad port, no host, another scheme) is a UserError naming it."""
    given = url
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as e:
        raise UserError(redact(f"--server {given}: not a valid URL ({e})")) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--server {redact(given)}: not a valid URL (want http://HOST:PORT)")
    return url if url.endswith("/v1") else url + "/v1"


class RemoteEngine(Engine):
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        server_thinking: bool = False,
    ) -> None:
        self.url = redact(url)  # what messages and records show: never its credentials
        self.server_thinking = server_thinking  # the server limits reasoning itself (vllm_xargs)
        self.base = api_base(url)
        uds = url.removeprefix(UDS_SCHEME) if url.startswith(UDS_SCHEME) else None
        if uds:  # a Unix socket (a resident engine's)
            self.base = "http://localhost/v1"
        self.shown_base = redact(self.base)
        self.api_key = api_key
        self.wanted_model = model
        self.model = model or ""
        self.in_flight = 0
        self.read_timeout = timeout  # the longest silence mid-request before the server counts as hung
        self._probe_timeout = httpx.Timeout(min(timeout, PROBE_TIMEOUT), connect=CONNECT_TIMEOUT)
        self._tokenized: dict[str, list[int]] = {}
        self._eot_id: int | None = None
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        transport = httpx.AsyncHTTPTransport(uds=uds, limits=limits) if uds else None
        self._client = httpx.AsyncClient(
            base_url=self.base, headers=headers, timeout=timeout, limits=limits, transport=transport
        )

    async def start(self) -> None:
        """Ask the server what it serves; also the health probe of a server pool."""
        try:
            response = await self._client.get("/models", timeout=self._probe_timeout)
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        if response.status_code >= 400:
            raise self._http_error(response)
        where = f"{self.shown_base}/models"
        models = parse_model_list(reply_json(response, where), where)
        if not models:
            raise EngineError(f"{self.url}: the server lists no models")
        wanted = self.wanted_model
        chosen = next((m for m in models if m["id"] == wanted), None) if wanted else models[0]
        if chosen is None:
            names = ", ".join(m["id"] for m in models)
            raise UserError(f"{self.url}: the server has no model {wanted!r} (it serves: {names})")
        self.model = chosen["id"]
        self.max_model_len = chosen.get("max_model_len")
        try:
            eot = await self.token_ids(EOT)
        except EngineError:  # not a vLLM server: stop on the text instead
            eot = []
        self._eot_id = eot[0] if len(eot) == 1 else None

    def payload(self, request: Request, assistant_prefix: str, max_tokens: int | None) -> dict:
        s = request.sampling
        payload = {
            "model": self.model,
            "messages": build_messages(
                request.question, request.audios, request.system, assistant_prefix, request.history
            ),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            "top_p": s.top_p,
            # vLLM extensions: continue the assistant's "<think>\n", keep special tokens so the
            # </think> tag survives, and stop on <|EOT|> (its id as the server's tokenizer has
            # it; a `stop` string only where the server cannot say, since vLLM holds back text
            # that could start one, which shifts text against tokens in its reasoning split).
            "continue_final_message": True,
            "add_generation_prompt": False,
            "skip_special_tokens": False,
        }
        if self._eot_id is not None:
            payload["stop_token_ids"] = [self._eot_id]
        else:
            payload["stop"] = [EOT]
        if max_tokens is not None:  # else the server gives all the room its context leaves
            payload["max_tokens"] = max_tokens
        if s.seed is not None:
            payload["seed"] = s.seed
        t = request.thinking
        if self.server_thinking and t.constrained:
            payload["vllm_xargs"] = thinking_args(t.budget, t.min_tokens)
        return payload

    async def stream(self, request: Request) -> AsyncIterator[Delta | Final]:
        max_tokens = max_tokens_to_send(request, self.max_model_len)
        self.in_flight += 1
        try:
            run = Run(request.thinking)
            if request.thinking.constrained and not self.server_thinking:
                phases = phased(self, request, max_tokens, run)
            else:
                mode = "normal" if request.thinking.enabled else "answer"
                phases = run.phase(self, self.payload(request, request.thinking.prefix, max_tokens), mode)
            async for event in phases:  # each phase flushes the splitter as it ends
                yield event
            yield run.final(self.model)
        finally:
            self.in_flight -= 1

    async def token_ids(self, text: str) -> list[int]:
        """``text`` as the server's tokenizer writes it (vLLM's /tokenize)."""
        if text in self._tokenized:
            return self._tokenized[text]
        url = self.base.removesuffix("/v1") + "/tokenize"
        body = {"model": self.model, "prompt": text, "add_special_tokens": False}
        try:
            response = await self._client.post(url, json=body, timeout=self._probe_timeout)
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        tokens = None
        url = redact(url)
        if response.status_code == 200:
            with contextlib.suppress(EngineError):
                body = reply_json(response, url)
                tokens = body.get("tokens") if isinstance(body, dict) else None
        if not tokens:
            raise EngineError(f"{self.url}: --min-think needs a vLLM server that can tokenize {text} (POST /tokenize)")
        self._tokenized[text] = parse_tokens(tokens, url)
        return self._tokenized[text]

    async def phase(self, payload: dict) -> AsyncIterator[Text | PhaseEnd]:
        """One streamed request: its text as it comes, then how it ended (checked where it is
        parsed; what the text means is the caller's :class:`Run`)."""
        finish_reason = usage = None
        got_done = False
        chunks = 0
        # A server that keeps the stream alive without text (comments, empty chunks) or sends
        # more text than it was asked for is as stuck as a silent one.
        limit = payload.get("max_tokens") or self.max_model_len or UNKNOWN_CONTEXT
        most_chunks = 2 * limit + 16
        quiet_since = time.monotonic()
        try:
            async with self._client.stream("POST", "/chat/completions", json=payload) as response:
                if response.status_code >= 400:
                    raise self._http_error(response, await _head_of(response))
                async for line in _lines(response, self.url):
                    if time.monotonic() - quiet_since > self.read_timeout:
                        raise EngineError(
                            f"{self.url}: no text from the server for {self.read_timeout:.0f}s "
                            "(hung? --timeout sets the limit)",
                            server_down=True,
                        )
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        got_done = True
                        break
                    chunk = parse_chunk(data, self.url)
                    if chunk.get("error") is not None:
                        err = chunk["error"]
                        msg = err.get("message") if isinstance(err, dict) else err
                        msg = " ".join(str(msg).split())[:300]
                        raise EngineError(f"{self.url}: server error mid-stream: {msg}", retryable=True)
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if chunk.get("model") and not self.model:
                        self.model = chunk["model"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}  # parse_chunk checked the types
                        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                        content = delta.get("content")
                        if reasoning or content:
                            chunks += 1
                            quiet_since = time.monotonic()
                            if chunks > most_chunks:
                                raise EngineError(f"{self.url}: the server sent more than the {limit} tokens asked for")
                            yield Text(reasoning, content)
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as e:
            raise self._transport_error(e, mid_stream=chunks > 0) from None
        if not got_done and finish_reason is None:
            raise EngineError(f"{self.url}: the stream ended early after {chunks} chunks", retryable=True)
        yield PhaseEnd(finish_reason=finish_reason, usage=usage, chunks=chunks)

    def _transport_error(self, e: httpx.HTTPError, mid_stream: bool = False) -> EngineError:
        """The server is unreachable, hung or gone: ``server_down``, so a pool sends the
        request elsewhere and probes this server until it answers again."""
        if isinstance(e, httpx.ConnectError):
            return EngineError(
                f"cannot connect to {self.url}: {_reason(e)} (is the server running? `stepaudio serve` starts one)",
                server_down=True,
            )
        if isinstance(e, httpx.ConnectTimeout):
            return EngineError(f"cannot connect to {self.url}: timed out", server_down=True)
        if isinstance(e, httpx.TimeoutException):
            return EngineError(
                f"{self.url}: no answer from the server for {_read_limit(e, self.read_timeout):.0f}s "
                "(hung? --timeout sets the limit)",
                server_down=True,
            )
        if mid_stream or isinstance(e, httpx.RemoteProtocolError | httpx.ReadError):
            # One plain line; what the connection library said only for those who ask.
            why = f" ({_reason(e)})" if os.environ.get("STEPAUDIO_DEBUG") else " (the server stopped or restarted?)"
            return EngineError(f"{self.url}: the connection dropped mid-stream{why}", server_down=True)
        return EngineError(f"{self.url}: {_reason(e)}", server_down=True)

    def _http_error(self, response: httpx.Response, text: str | None = None) -> EngineError:
        code = response.status_code
        msg = server_message(response, text)
        if code == 401:
            return EngineError(f"{self.url}: unauthorized (401): {msg}; pass --api-key or set STEPAUDIO_API_KEY")
        if code == 404 and response.request.url.path.endswith("/models"):
            return EngineError(f"{self.url}: not an OpenAI-compatible server (404 on /v1/models)")
        return EngineError(f"{self.url}: server returned {code}: {msg}", retryable=code >= 500 or code == 429)

    async def close(self) -> None:
        await self._client.aclose()


async def _head_of(response: httpx.Response, limit: int = 1 << 16) -> str:
    """The start of a streamed error body: enough for its message, however much a server sends."""
    body = b""
    async for block in response.aiter_bytes():
        body += block
        if len(body) >= limit:
            break
    return body[:limit].decode(errors="replace")


def _read_limit(e: httpx.TimeoutException, default: float) -> float:
    try:
        return e.request.extensions["timeout"]["read"] or default
    except (RuntimeError, KeyError, TypeError):  # no request attached
        return default


def _reason(e: BaseException) -> str:
    seen: BaseException | None = e
    while seen is not None:  # httpx wraps the OS error ("All connection attempts failed")
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = redact(str(e)) or type(e).__name__
    return " ".join(text.split())[:200]


async def _lines(response: httpx.Response, url: str) -> AsyncIterator[str]:
    """The lines of a streamed body (SSE ends them with CRLF, LF or CR), none longer than
    :data:`MAX_LINE_BYTES`: a longer one is an EngineError before it is all in memory."""
    pending = b""
    async for piece in response.aiter_bytes():
        parts = _LINE_END.split(pending + piece)
        pending = parts.pop()
        for line in (*parts, pending):  # the line still open counts too
            if len(line) > MAX_LINE_BYTES:
                raise EngineError(f"{url}: the server sent a stream line longer than {MAX_LINE_BYTES >> 20} MiB")
        for line in parts:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")
