"""What an OpenAI-compatible server sends, checked where it is parsed: error bodies, the model
list, stream chunks. Anything of the wrong shape is an EngineError naming the URL (one line for
`ask`, the file's failure for `batch`), never a Python exception from deep inside."""

from __future__ import annotations

import json

import httpx

from stepaudio_cli.errors import EngineError


def server_message(response: httpx.Response, text: str | None = None) -> str:
    """The human part of an error body: OpenAI ``{"error": {"message"}}``, FastAPI ``detail``..."""
    text = response.text if text is None else text
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
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


def reply_json(response: httpx.Response, where: str):
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; nesting too deep
        raise EngineError(f"{where}: not an OpenAI-compatible server (reply is not JSON)") from None


def _shape_error(where: str, what: str, value) -> EngineError:
    shown = json.dumps(value, ensure_ascii=True, default=str)
    return EngineError(f"{where}: unexpected reply from the server: {what} is {shown[:80]}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_model_list(body, where: str) -> list[dict]:
    """The models of a /v1/models reply, each an object with a string ``id`` and an optional
    positive integer ``max_model_len``."""
    if not isinstance(body, dict):
        raise _shape_error(where, "the reply", body)
    models = body.get("data")
    if models is None:
        models = []
    if not isinstance(models, list):
        raise _shape_error(where, "'data'", models)
    for m in models:
        if not isinstance(m, dict) or not isinstance(m.get("id"), str):
            raise _shape_error(where, "a model entry", m)
        n = m.get("max_model_len")
        if n is not None and not (_is_count(n) and n > 0):
            raise _shape_error(where, "'max_model_len'", n)
    return models


def parse_tokens(tokens, where: str) -> list[int]:
    """The ``tokens`` of a /tokenize reply: a list of token ids."""
    if not isinstance(tokens, list) or not all(_is_count(t) for t in tokens):
        raise _shape_error(where, "'tokens'", tokens)
    return tokens


def parse_chunk(data: str, where: str) -> dict:
    """One ``data:`` line of a chat-completions stream, checked field by field: an object whose
    ``choices`` is a list of objects with an object ``delta`` of string texts, a string
    ``finish_reason`` and ``usage`` of non-negative integer counts (each may be absent or null)."""
    try:
        chunk = json.loads(data)
    except (ValueError, RecursionError):
        raise EngineError(f"{where}: malformed stream chunk: {data[:120]!r}") from None
    if not isinstance(chunk, dict):
        raise _shape_error(where, "a stream chunk", chunk)
    if chunk.get("error") is not None:
        return chunk
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise _shape_error(where, "'choices'", choices)
    for choice in choices or []:
        if not isinstance(choice, dict):
            raise _shape_error(where, "a choice", choice)
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise _shape_error(where, "'delta'", delta)
        for name in ("reasoning", "reasoning_content", "content"):
            text = (delta or {}).get(name)
            if text is not None and not isinstance(text, str):
                raise _shape_error(where, f"'{name}'", text)
        reason = choice.get("finish_reason")
        if reason is not None and not isinstance(reason, str):
            raise _shape_error(where, "'finish_reason'", reason)
    usage = chunk.get("usage")
    if usage is not None:
        if not isinstance(usage, dict):
            raise _shape_error(where, "'usage'", usage)
        for name in ("prompt_tokens", "completion_tokens"):
            n = usage.get(name)
            if n is not None and not _is_count(n):
                raise _shape_error(where, f"'usage.{name}'", n)
    model = chunk.get("model")
    if model is not None and not isinstance(model, str):
        raise _shape_error(where, "'model'", model)
    return chunk
