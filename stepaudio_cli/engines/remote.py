"""Remote engine: any OpenAI-compatible chat-completions server, streamed over SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx

from stepaudio_cli.engines.base import Clock, Done, Engine, Usage
from stepaudio_cli.errors import EngineError, UserError
from stepaudio_cli.prompt import EOT_TOKEN_ID, Delta, ReasoningSplitter, Request, build_messages, fit_max_tokens

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0


def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` -> ``http://host:port/v1``."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if url.endswith("/v1") else url + "/v1"


def _server_message(response: httpx.Response) -> str:
    """The human part of an error body: OpenAI ``{"error": {"message"}}``, FastAPI ``detail``..."""
    text = response.text
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if msg:
                return " ".join(str(msg).split())
        elif isinstance(err, str):
            return err
        if "detail" in body:
            return " ".join(str(body["detail"]).split())
    text = " ".join(text.split())
    return text[:300] or response.reason_phrase


class RemoteEngine(Engine):
    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.url = url
        self.base = api_base(url)
        self.api_key = api_key
        self.model = model or ""
        self.in_flight = 0
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(base_url=self.base, headers=headers, timeout=timeout, limits=limits)

    async def start(self, on_status: Callable[[str], None] | None = None) -> None:
        try:
            response = await self._client.get("/models")
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        if response.status_code >= 400:
            raise self._http_error(response)
        try:
            models = response.json().get("data") or []
        except ValueError:
            raise EngineError(f"{self.base}/models: not an OpenAI-compatible server (reply is not JSON)") from None
        if not models:
            raise EngineError(f"{self.url}: the server lists no models")
        chosen = next((m for m in models if m.get("id") == self.model), None) if self.model else models[0]
        if chosen is None:
            names = ", ".join(str(m.get("id")) for m in models)
            raise UserError(f"{self.url}: the server has no model {self.model!r} (it serves: {names})")
        self.model = str(chosen.get("id"))
        self.max_model_len = chosen.get("max_model_len")

    async def stream(self, request: Request) -> AsyncIterator[Delta | Done]:
        max_tokens = fit_max_tokens(request.audios, request.sampling, self.max_model_len)
        s = request.sampling
        payload = {
            "model": self.model,
            "messages": build_messages(request.question, request.audios, request.system),
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": max_tokens,
            # vLLM extensions: continue the assistant's "<think>\n", keep special tokens so the
            # </think> tag survives, and stop on <|EOT|>. (No `stop` string: vLLM holds back
            # text that could start one, which shifts text against tokens in its reasoning split.)
            "continue_final_message": True,
            "add_generation_prompt": False,
            "skip_special_tokens": False,
            "stop_token_ids": [EOT_TOKEN_ID],
        }
        if s.seed is not None:
            payload["seed"] = s.seed
        self.in_flight += 1
        try:
            async for event in self._stream(payload):
                yield event
        finally:
            self.in_flight -= 1

    async def _stream(self, payload: dict) -> AsyncIterator[Delta | Done]:
        clock = Clock()
        splitter = ReasoningSplitter()
        usage = Usage()
        finish_reason = None
        chunks = reasoning_chunks = 0
        got_done = False
        server_splits = False  # the server sends reasoning in its own field
        try:
            async with self._client.stream("POST", "/chat/completions", json=payload) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._http_error(response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        got_done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise EngineError(f"{self.url}: malformed stream chunk: {data[:120]}") from None
                    if "error" in chunk:
                        err = chunk["error"]
                        msg = err.get("message") if isinstance(err, dict) else str(err)
                        raise EngineError(f"{self.url}: server error mid-stream: {msg}", retryable=True)
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage.prompt_tokens = int(u.get("prompt_tokens") or 0)
                        usage.completion_tokens = int(u.get("completion_tokens") or 0)
                        details = u.get("completion_tokens_details") or {}
                        if details.get("reasoning_tokens"):
                            usage.reasoning_tokens = int(details["reasoning_tokens"])
                    if chunk.get("model") and not self.model:
                        self.model = chunk["model"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                        content = delta.get("content")
                        events: list[Delta] = []
                        if reasoning:
                            server_splits = True
                            events += splitter.feed_reasoning(reasoning)
                        if content:
                            # A server that split reasoning off sends only the answer as content.
                            events += splitter.feed_answer(content) if server_splits else splitter.feed(content)
                        if reasoning or content:
                            clock.tick()
                            chunks += 1
                            if reasoning or not splitter.in_answer:
                                reasoning_chunks += 1
                        for ev in events:
                            yield ev
                        if choice.get("finish_reason"):
                            finish_reason = choice["finish_reason"]
        except httpx.HTTPError as e:
            raise self._transport_error(e, mid_stream=chunks > 0) from None
        if not got_done and finish_reason is None:
            raise EngineError(f"{self.url}: the stream ended early after {chunks} chunks", retryable=True)
        for ev in splitter.finish():
            yield ev
        if not usage.completion_tokens:
            usage.completion_tokens = chunks
        if not usage.reasoning_tokens:
            # vLLM streams one token per chunk; close enough when the server does not say.
            usage.reasoning_tokens = reasoning_chunks
        yield Done(
            model=self.model,
            usage=usage,
            timings=clock.timings(usage.completion_tokens),
            finish_reason=finish_reason,
        )

    def _transport_error(self, e: httpx.HTTPError, mid_stream: bool = False) -> EngineError:
        if isinstance(e, httpx.ConnectError):
            return EngineError(
                f"cannot connect to {self.url}: {_reason(e)} (is the server running? `stepaudio serve` starts one)",
                retryable=True,
            )
        if isinstance(e, httpx.ConnectTimeout):
            return EngineError(f"cannot connect to {self.url}: timed out", retryable=True)
        if isinstance(e, httpx.ReadTimeout):
            return EngineError(f"{self.url}: no data from the server for {READ_TIMEOUT:.0f}s", retryable=True)
        if mid_stream or isinstance(e, httpx.RemoteProtocolError | httpx.ReadError):
            return EngineError(f"{self.url}: the connection dropped mid-stream ({_reason(e)})", retryable=True)
        return EngineError(f"{self.url}: {_reason(e)}", retryable=True)

    def _http_error(self, response: httpx.Response) -> EngineError:
        code = response.status_code
        msg = _server_message(response)
        if code == 401:
            return EngineError(
                f"{self.url}: unauthorized (401): {msg}; pass --api-key or set STEPAUDIO_API_KEY"
            )
        if code == 404 and response.request.url.path.endswith("/models"):
            return EngineError(f"{self.url}: not an OpenAI-compatible server (404 on /v1/models)")
        return EngineError(f"{self.url}: server returned {code}: {msg}", retryable=code >= 500 or code == 429)

    async def close(self) -> None:
        await self._client.aclose()


def _reason(e: BaseException) -> str:
    seen: BaseException | None = e
    while seen is not None:  # httpx wraps the OS error ("All connection attempts failed")
        if isinstance(seen, ConnectionRefusedError) or "Connection refused" in str(seen):
            return "connection refused"
        seen = seen.__cause__ or seen.__context__
    text = str(e) or type(e).__name__
    return " ".join(text.split())[:200]


class RemotePool(Engine):
    """Several servers behind one engine: each request goes to the least busy one."""

    def __init__(self, engines: list[RemoteEngine]) -> None:
        self.engines = engines

    async def start(self, on_status: Callable[[str], None] | None = None) -> None:
        for engine in self.engines:
            await engine.start(on_status)
        self.model = self.engines[0].model
        lens = [e.max_model_len for e in self.engines if e.max_model_len]
        self.max_model_len = min(lens) if lens else None

    async def stream(self, request: Request) -> AsyncIterator[Delta | Done]:
        engine = min(self.engines, key=lambda e: e.in_flight)
        async for event in engine.stream(request):
            yield event

    async def close(self) -> None:
        for engine in self.engines:
            await engine.close()
