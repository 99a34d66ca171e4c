"""Remote engine: any OpenAI-compatible chat-completions server, streamed over SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx

from stepaudio_cli.engines.base import Clock, Done, Engine, Usage
from stepaudio_cli.errors import EngineError, UserError
from stepaudio_cli.prompt import (
    ASSISTANT_PREFIX,
    EOT,
    THINK_END,
    Delta,
    ReasoningSplitter,
    Request,
    build_messages,
    request_max_tokens,
)

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
        self.read_timeout = read_timeout
        self._tokenized: dict[str, list[int]] = {}
        self._eot_id: int | None = None
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
        try:
            eot = await self._token_ids(EOT)
        except EngineError:  # not a vLLM server: stop on the text instead
            eot = []
        self._eot_id = eot[0] if len(eot) == 1 else None

    def _payload(self, request: Request, assistant_prefix: str, max_tokens: int | None) -> dict:
        s = request.sampling
        payload = {
            "model": self.model,
            "messages": build_messages(request.question, request.audios, request.system, assistant_prefix),
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
        return payload

    async def stream(self, request: Request) -> AsyncIterator[Delta | Done]:
        max_tokens = request_max_tokens(request, self.max_model_len)
        self.in_flight += 1
        try:
            run = _Run(request.thinking)
            if request.thinking.constrained:
                phases = self._phased(request, max_tokens, run)
            else:
                mode = "normal" if request.thinking.enabled else "answer"
                phases = self._phase(self._payload(request, request.thinking.prefix, max_tokens), run, mode)
            async for event in phases:  # each phase flushes the splitter as it ends
                yield event
            yield run.done(self.model)
        finally:
            self.in_flight -= 1

    async def _phased(self, request: Request, max_tokens: int | None, run: _Run) -> AsyncIterator[Delta]:
        """Reasoning length control against a stock server, in up to three requests that each
        continue the assistant message: a reasoning-only stretch with ``</think>`` and
        ``<|EOT|>`` banned (``--min-think``), a stretch capped at the budget, then the rest
        (after a forced ``</think>`` when the budget ran out)."""
        t = request.thinking
        left = max_tokens  # None: no cap but the context

        def upto(n: int) -> int:
            return n if left is None else min(n, left)

        def more() -> bool:
            return left is None or left > 0

        if t.min_tokens:
            # The tag may be several tokens: banning its first one holds it back.
            end, eot = await self._token_ids(THINK_END), await self._token_ids(EOT)
            if len(eot) != 1:
                raise EngineError(f"{self.url}: the server's tokenizer has no single {EOT} token")
            bias = {str(end[0]): -100, str(eot[0]): -100}
            payload = self._payload(request, ASSISTANT_PREFIX, upto(t.min_tokens)) | {"logit_bias": bias}
            async for ev in self._phase(payload, run, "reasoning"):
                yield ev
            left = None if left is None else left - run.phase_tokens
        if t.budget is not None and more():
            room = max(t.budget - run.reasoning_tokens, 0)
            if room:
                async for ev in self._phase(self._payload(request, run.prefix(), upto(room)), run, "normal"):
                    yield ev
                left = None if left is None else left - run.phase_tokens
                if run.finish_reason == "stop" and run.splitter.in_answer:
                    return
            # Budget spent, or the model stopped without closing its reasoning: close it.
            if not run.splitter.in_answer:
                for ev in run.splitter.feed_answer(""):
                    yield ev
        if more():
            mode = "answer" if run.splitter.in_answer else "normal"
            async for ev in self._phase(self._payload(request, run.prefix(), left), run, mode):
                yield ev

    async def _token_ids(self, text: str) -> list[int]:
        """``text`` as the server's tokenizer writes it (vLLM's /tokenize)."""
        if text in self._tokenized:
            return self._tokenized[text]
        url = self.base.removesuffix("/v1") + "/tokenize"
        try:
            response = await self._client.post(url, json={"model": self.model, "prompt": text, "add_special_tokens": False})
        except httpx.HTTPError as e:
            raise self._transport_error(e) from None
        try:
            tokens = response.json().get("tokens") if response.status_code == 200 else None
        except ValueError:
            tokens = None
        if not tokens:
            raise EngineError(f"{self.url}: --min-think needs a vLLM server that can tokenize {text} (POST /tokenize)")
        self._tokenized[text] = [int(t) for t in tokens]
        return self._tokenized[text]

    async def _phase(self, payload: dict, run: _Run, mode: str) -> AsyncIterator[Delta]:
        """One streamed request. ``mode``: "normal" (reasoning then answer), "reasoning" (all
        text is reasoning), "answer" (all text is answer)."""
        run.phase_tokens = 0
        run.finish_reason = None
        got_done = False
        chunks = 0
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
                        run.add_usage(chunk["usage"])
                    if chunk.get("model") and not self.model:
                        self.model = chunk["model"]
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or {}
                        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
                        content = delta.get("content")
                        if reasoning or content:
                            chunks += 1
                            for ev in run.feed(reasoning, content, mode):
                                yield ev
                        if choice.get("finish_reason"):
                            run.finish_reason = choice["finish_reason"]
        except httpx.HTTPError as e:
            raise self._transport_error(e, mid_stream=chunks > 0) from None
        if not got_done and run.finish_reason is None:
            raise EngineError(f"{self.url}: the stream ended early after {chunks} chunks", retryable=True)
        if not run.phase_tokens:
            run.phase_tokens = chunks
            run.usage.completion_tokens += chunks
        for ev in run.splitter.finish():
            yield ev

    def _transport_error(self, e: httpx.HTTPError, mid_stream: bool = False) -> EngineError:
        if isinstance(e, httpx.ConnectError):
            return EngineError(
                f"cannot connect to {self.url}: {_reason(e)} (is the server running? `stepaudio serve` starts one)",
                retryable=True,
            )
        if isinstance(e, httpx.ConnectTimeout):
            return EngineError(f"cannot connect to {self.url}: timed out", retryable=True)
        if isinstance(e, httpx.ReadTimeout):
            return EngineError(f"{self.url}: no data from the server for {self.read_timeout:.0f}s", retryable=True)
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


class _Run:
    """What one request has produced so far, across the requests (phases) it takes."""

    def __init__(self, thinking) -> None:
        self.splitter = ReasoningSplitter(in_answer=not thinking.enabled)
        self.clock = Clock()
        self.usage = Usage()
        self.reasoning_tokens = 0
        self.server_splits = False  # the server sends reasoning in its own field
        self.phase_tokens = 0
        self.finish_reason: str | None = None
        self._first_phase = True

    def feed(self, reasoning: str | None, content: str | None, mode: str) -> list[Delta]:
        self.clock.tick()
        # vLLM streams one token per chunk: count the chunks that carry reasoning (with a raw
        # stream, every chunk up to and including the one with </think>).
        if mode == "reasoning" or (
            mode == "normal" and (reasoning or (not self.server_splits and not self.splitter.in_answer))
        ):
            self.reasoning_tokens += 1
        events: list[Delta] = []
        for text, labelled in ((reasoning, "reasoning"), (content, "content")):
            if not text:
                continue
            if mode == "answer":
                events += self.splitter.feed_answer(text)
            elif mode == "reasoning":
                events += self.splitter.feed_reasoning(text)
            elif labelled == "reasoning":
                self.server_splits = True
                events += self.splitter.feed_reasoning(text)
            elif self.server_splits:
                events += self.splitter.feed_answer(text)
            else:
                events += self.splitter.feed(text)
        return events

    def add_usage(self, u: dict) -> None:
        if self._first_phase:
            self.usage.prompt_tokens = int(u.get("prompt_tokens") or 0)
            self._first_phase = False
        self.phase_tokens = int(u.get("completion_tokens") or 0)
        self.usage.completion_tokens += self.phase_tokens

    def prefix(self) -> str:
        """The assistant text so far, for a request that continues it."""
        text = ASSISTANT_PREFIX + self.splitter.reasoning
        if self.splitter.in_answer:
            # Right after the tag, as the in-process engine forces it: the model writes its
            # own separator before the answer.
            text += THINK_END + ("\n\n" + self.splitter.answer if self.splitter.answer else "")
        return text

    def done(self, model: str) -> Done:
        self.usage.reasoning_tokens = self.reasoning_tokens
        return Done(
            model=model, usage=self.usage, timings=self.clock.timings(self.usage.completion_tokens),
            finish_reason=self.finish_reason,
        )


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
