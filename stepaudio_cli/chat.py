"""`stepaudio chat`: an interactive conversation about audio on one engine session.

:func:`run` reads lines through the callbacks it is given (:class:`ChatIO`) and answers each
question as a turn of one conversation (conversation.py), the earlier turns sent again, each
turn logged. The engine runs on an event loop in a thread of its own (:class:`EngineThread`),
so the main thread keeps reading lines and receiving Ctrl-C: Ctrl-C while an answer streams
cancels that request (the engine aborts it) and the chat goes on; a stopped answer is neither
logged nor part of the conversation. Slash commands: ``/audio FILE`` (sent with the next
question), ``/reasoning on|off``, ``/save FILE`` (the conversation as JSON), ``/help``, ``/exit``.
A failed turn (a server down, audio that does not fit) is one error line; the chat goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

from stepaudio_cli.ask import Plan, answer, log_turn
from stepaudio_cli.audio import Audio, load_audio
from stepaudio_cli.conversation import Conversation
from stepaudio_cli.durations import format_duration
from stepaudio_cli.engines import Engine, EngineSettings, Result, open_engine
from stepaudio_cli.errors import UserError
from stepaudio_cli.logbook import Logbook
from stepaudio_cli.records import ask_record
from stepaudio_cli.request import Request, Sampling, Thinking
from stepaudio_cli.splitter import Delta
from stepaudio_cli.windows import MapProgress, Windowing

PROMPT = ">>> "
HELP = (
    "/audio FILE        add audio; it goes with your next question",
    "/reasoning on|off  show or hide the reasoning",
    "/save FILE         write the conversation so far as JSON",
    "/exit              end the chat (or Ctrl-D); Ctrl-C stops an answer",
)


@dataclass
class ChatIO:
    """What the chat is given to talk to the user with."""

    read: Callable[[str], str]  #: a line; EOFError at the end of input, KeyboardInterrupt on Ctrl-C
    on_status: Callable[[str | None], None]
    on_delta: Callable[[Delta], None]
    on_windows: Callable[[MapProgress], None]
    #: An answered turn: its request, result, conversation id and turn number.
    on_answer: Callable[[Request, Result, str, int], None]
    on_stopped: Callable[[], None]  #: Ctrl-C stopped an answer
    show_reasoning: Callable[[bool], None]
    info: Callable[[str], None]
    warn: Callable[[str], None]
    error: Callable[[str], None]


class EngineThread:
    """An engine session on an event loop in a thread: started on entry, closed on exit."""

    def __init__(self, settings: EngineSettings, on_status: Callable[[str | None], None]) -> None:
        self._settings, self._on_status = settings, on_status
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="engine", daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self.engine: Engine | None = None

    def __enter__(self) -> EngineThread:
        self._thread.start()
        try:
            session = open_engine(self._settings, self._on_status)
            self.engine = self.wait(self.submit(self._stack.enter_async_context(session)))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    @staticmethod
    def wait(future: concurrent.futures.Future):
        """The coroutine's result; Ctrl-C cancels it (and waits for it to stop) and is raised again."""
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            with contextlib.suppress(BaseException):
                future.result(timeout=30)
            raise

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self.submit(self._stack.aclose()).result(timeout=120)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop.close()


class Chat:
    """One conversation's state between turns: the audio waiting for the next question, the
    settings every question is asked with, the records of the turns answered here."""

    def __init__(
        self,
        conversation: Conversation,
        *,
        system: str | None,
        sampling: Sampling,
        thinking: Thinking,
        windowing: Windowing,
        audios: tuple[Audio, ...] = (),
    ) -> None:
        self.conversation = conversation
        self.system = system if system is not None else conversation.system
        self.sampling, self.thinking, self.windowing = sampling, thinking, windowing
        self.pending: list[Audio] = list(audios)
        self.records: list[dict] = []
        self.show_reasoning = True
        self._saved: set[Path] = set()  # files this chat wrote: /save may write them again

    def request(self, question: str) -> Request:
        return Request(
            audios=tuple(self.pending),
            question=question,
            system=self.system,
            sampling=self.sampling,
            thinking=self.thinking,
            history=self.conversation.history,
        )

    def answered(self, request: Request, result: Result) -> None:
        """``request`` was answered: it becomes the conversation's next turn."""
        record = ask_record(request, result, conversation=self.conversation.id, turn=self.conversation.turn)
        self.records.append(record)
        self.conversation = self.conversation.then(request, result)
        self.pending = []

    # --- slash commands ---------------------------------------------------------------------

    def command(self, line: str, io: ChatIO) -> bool:
        """Run a slash command; False when it ends the chat. Bad use is a UserError."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/help":
            for text in HELP:
                io.info(text)
        elif name == "/audio":
            if not arg or arg == "-":
                raise UserError("/audio FILE: name an audio file")
            audio = load_audio(os.path.expanduser(arg))
            self.pending.append(audio)
            io.info(f"{audio.name} ({format_duration(audio.duration)}) goes with your next question")
        elif name == "/reasoning":
            if arg not in ("on", "off"):
                raise UserError("/reasoning on|off")
            self.show_reasoning = arg == "on"
            io.show_reasoning(self.show_reasoning)
        elif name == "/save":
            if not arg:
                raise UserError("/save FILE: name a file to write the conversation to")
            path = self.save(Path(os.path.expanduser(arg)))
            io.info(f"saved {len(self.records)} turns to {path}")
        else:
            raise UserError(f"unknown command {name} (/help lists them)")
        return True

    def save(self, path: Path) -> Path:
        """Write the conversation (its id and this chat's turns, as ``ask --json`` records) to a
        new file, or one this chat wrote before; never over another file."""
        resolved = path.resolve()
        if path.exists() and resolved not in self._saved:
            raise UserError(f"{path}: already exists; /save writes a new file")
        body = json.dumps({"conversation": self.conversation.id, "turns": self.records}, ensure_ascii=False, indent=2)
        tmp = resolved.with_name(f".{resolved.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(body + "\n", encoding="utf-8")
            os.replace(tmp, resolved)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
        self._saved.add(resolved)
        return resolved


def run(chat: Chat, settings: EngineSettings, logged: EngineSettings, log: Logbook | None, io: ChatIO) -> None:
    """Read lines until ``/exit`` or the end of input, answering each question on one engine
    session (``settings``; ``logged``: the settings the log records)."""
    with EngineThread(settings, io.on_status) as engines:
        while True:
            try:
                line = io.read(PROMPT).strip()
            except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as shells do
                io.info("")
                continue
            except EOFError:
                io.info("")
                return
            if not line:
                continue
            try:
                if line.startswith("/"):
                    if not chat.command(line, io):
                        return
                    continue
                request = chat.request(line)
                turn = chat.conversation
                try:
                    result = engines.wait(
                        engines.submit(
                            answer(
                                engines.engine,
                                request,
                                Plan(chat.windowing),
                                on_delta=io.on_delta,
                                on_windows=io.on_windows,
                            )
                        )
                    )
                except KeyboardInterrupt:
                    io.on_stopped()
                    continue
            except UserError as e:
                io.error(e.message)
                continue
            io.on_answer(request, result, turn.id, turn.turn)
            chat.answered(request, result)
            log_turn(log, turn, request, result, logged, command="chat", on_warning=io.warn)


__all__ = ["HELP", "PROMPT", "Chat", "ChatIO", "EngineThread", "run"]
