"""Conversations: follow-up questions about a recording (``ask -c``, ``ask --conversation ID``, ``chat``).

A conversation lives in the log (logbook.py): its turns, in order. A follow-up loads them,
decodes each turn's audio again from the path logged (refused when the file changed: its
sha256 no longer matches), and sends every earlier turn before its own question
(``request.Turn``; prompt.py renders them as R1's template does), the assistant's replies
exactly as generated, so the prompt starts with the previous turn's prompt and reply and
vLLM's prefix cache serves them again, audio included.

A recording that was answered in windows comes back as text: the combining request's
question (each window's answer, labelled with its time range) and the combined reply; a
follow-up about it is answered from those notes, not by listening again.

With the log off there is nothing to continue: ``-c`` says so.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from stepaudio_cli.audio import STDIN_NAME, Audio, load_file, sha256_file
from stepaudio_cli.engines import EngineSettings, Result
from stepaudio_cli.errors import UserError
from stepaudio_cli.logbook import AudioRef, Entry, Logbook, LogError
from stepaudio_cli.records import params
from stepaudio_cli.request import Request, Turn

LOG_OFF = "--no-log, STEPAUDIO_LOG=0 or log = false in the config file"


@dataclass(frozen=True)
class Conversation:
    """A conversation's id, its earlier turns (as a follow-up sends them) and its system prompt."""

    id: str
    history: tuple[Turn, ...] = ()
    system: str | None = None

    @property
    def turn(self) -> int:
        """The number of the next turn (from 1)."""
        return len(self.history) + 1

    def then(self, request: Request, result: Result) -> Conversation:
        """The conversation after ``request`` was answered with ``result`` (``chat``'s next turn)."""
        return Conversation(self.id, (*self.history, turn_of(request, result)), request.system)


def new_id() -> str:
    return secrets.token_hex(6)


def start(log: Logbook | None, *, latest: bool = False, conversation_id: str | None = None) -> Conversation:
    """A new conversation, or (``latest``, ``conversation_id``) one from the log with its turns."""
    if not latest and conversation_id is None:
        return Conversation(new_id())
    flag = "-c/--continue" if conversation_id is None else f"--conversation {conversation_id}"
    if log is None:
        raise UserError(f"{flag}: conversations are kept in the log, and it is off ({LOG_OFF})")
    cid = conversation_id or log.latest_conversation()
    if cid is None:
        raise UserError(f"{flag}: no conversation in {log.path} yet; ask a question about a recording first")
    rows = log.conversation(cid)
    if not rows:
        raise UserError(f"{flag}: no such conversation in {log.path} (`stepaudio logs` lists them)")
    history = tuple(_turn(row, cid) for row in rows)
    return Conversation(cid, history, rows[-1]["system"])


def _turn(row: dict, cid: str) -> Turn:
    """An earlier turn from its log row: its audio decoded again (a windowed one: none)."""
    where = f"turn {row['turn']} of conversation {cid}"
    combined = row["sent_question"] is not None
    audios = () if combined else tuple(_reload(a, where) for a in row["audio"])
    usage = row["usage"] if isinstance(row["usage"], dict) else {}
    tokens = usage.get("completion_tokens")
    tokens = tokens if isinstance(tokens, int) else 0
    question = row["sent_question"] if combined else row["question"]
    return Turn(question=question, audios=audios, reply=row["reply"] or "", reply_tokens=tokens)


def _reload(ref: dict, where: str) -> Audio:
    name, path = ref["name"], ref["path"]
    if path is None:
        raise UserError(f"{where} read its audio from standard input, which is not kept: ask again naming a file")
    if not os.path.isfile(path):
        raise UserError(f"{path}: the audio of {where} is no longer there")
    try:
        same = ref["sha256"] is not None and sha256_file(path) == ref["sha256"]
    except OSError as e:
        raise UserError(f"{path}: cannot read the audio of {where} ({e.strerror or e})") from None
    if not same:
        raise UserError(f"{path}: changed since {where} (its sha256 differs); start a new conversation")
    return load_file(path, name)


def turn_of(request: Request, result: Result) -> Turn:
    """What a follow-up sends again of this answered turn."""
    reply = request.thinking.prefix + (result.raw if result.raw is not None else _joined(result))
    if result.combined_question is not None:
        return Turn(result.combined_question, (), reply, result.usage.completion_tokens)
    return Turn(request.question, request.audios, reply, result.usage.completion_tokens)


def _joined(result: Result) -> str:
    return f"{result.reasoning}</think>{result.answer}" if result.reasoning else result.answer


# --- the log ---------------------------------------------------------------------------------


def entry(
    conversation: Conversation, command: str, request: Request, result: Result, settings: EngineSettings
) -> Entry:
    """The log entry of one answered turn."""
    turn = turn_of(request, result)
    return Entry(
        conversation=conversation.id,
        turn=conversation.turn,
        command=command,
        question=request.question,
        system=request.system,
        sent_question=result.combined_question,
        reasoning=result.reasoning,
        answer=result.answer,
        reply=turn.reply,
        model=result.model,
        settings=_settings(request, settings),
        usage=result.usage.as_dict(),
        timings=result.timings.as_dict(),
        finish_reason=result.finish_reason,
        audio_seconds=round(request.audio_seconds, 3),
        audio=[_ref(a) for a in request.audios],
        windows=result.windows,
    )


def save(log: Logbook | None, item: Entry, on_warning: Callable[[str], None]) -> None:
    """Log ``item``; a log that cannot be written is one warning, never a failed answer."""
    if log is None:
        return
    try:
        log.add(item)
    except LogError as e:
        on_warning(f"the answer was not logged: {e.message}")


def _ref(audio: Audio) -> AudioRef:
    if audio.name == STDIN_NAME:
        return AudioRef(audio.name, None, None, round(audio.duration, 3))
    path = os.path.abspath(audio.name)
    try:
        sha = sha256_file(path)
    except OSError:  # gone since it was read: logged without a hash (it cannot be continued)
        sha = None
    return AudioRef(audio.name, path, sha, round(audio.duration, 3))


def _settings(request: Request, settings: EngineSettings) -> dict:
    engine = {
        "servers": [redact_url(u) for u in settings.servers] or None,
        "model": settings.served_model if settings.remote else settings.model,
        "max_model_len": settings.max_model_len,
        "quantization": settings.quantization,
        "kv_cache_dtype": settings.kv_cache_dtype,
    }
    return {**params(request.sampling, request.thinking, request.system), "engine": engine}


def redact_url(url: str) -> str:
    """``url`` without credentials: a user or password becomes ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.username is None and parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


__all__ = ["Conversation", "entry", "new_id", "redact_url", "save", "start", "turn_of"]
