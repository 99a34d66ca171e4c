"""`stepaudio mcp`: the Model Context Protocol server (stdio) that lets agents ask about audio.

Built on the official ``mcp`` SDK (the ``mcp`` extra); this module is imported only by the
command, so ``--help`` stays instant. Tools:

- ``ask``: ``audio`` (paths or http(s) URLs), ``question``, optionally ``conversation``,
  ``think_budget`` and ``max_tokens``; answers as text, with the whole result record
  (records.py: reasoning, usage, timings, ``conversation`` and ``turn``) as structured content.
  Every call is a turn logged in the local log (logbook.py), as `ask` logs it (``--no-log``,
  ``STEPAUDIO_LOG=0``: none, and then no conversations); ``conversation: ID`` continues that
  conversation (conversation.py), and then ``audio`` may be left out. A long recording's windows
  are reported as progress (to a client that asked for it). The engine is chosen as `ask` does:
  ``--server``/``STEPAUDIO_SERVER``, else the resident engine (``resident.session``), started by
  the first call and kept for ``--keep-alive``.
- ``loaded_engines``: the engines kept loaded, as `stepaudio ps` lists them.

Every failure is a tool error carrying the one-line message `ask` would print; the server
itself never stops for a call's failure. Each call runs in a worker thread (decoding, fetching
URLs and waiting for an engine block), with its own event loop for the engine session.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from typing import Annotated

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent
from pydantic import Field

from stepaudio_cli import __version__
from stepaudio_cli.engines import EngineSettings, Result
from stepaudio_cli.errors import UserError
from stepaudio_cli.request import Request, Sampling, Thinking
from stepaudio_cli.url_audio import UrlFetching
from stepaudio_cli.windows import MapProgress, Windowing

INSTRUCTIONS = (
    "Ask Step-Audio-R1, an audio reasoning model, questions about recordings (speech, music, sounds): "
    "transcription, who says what, tone and emotion, events. Give local paths as the server's machine "
    "sees them (absolute paths are safest) or http(s) URLs of media files or pages."
)


@dataclasses.dataclass(frozen=True)
class McpConfig:
    """What every call shares: the engine (as `ask` chooses it), the defaults a call may override,
    and where status lines go (``on_status``: the command's terminal, on stderr)."""

    settings: EngineSettings
    keep_alive: float | None
    sleep_for: float | None = 0.0  # --sleep-for: an engine it starts sleeps this long when idle (None: forever)
    log: bool = True  # log every call (logs.db): conversations live there
    system: str | None = None
    sampling: Sampling = Sampling()
    thinking: Thinking = Thinking()  # a call's think_budget takes the place of its budget
    windowing: Windowing = Windowing()
    urls: UrlFetching = UrlFetching()
    on_status: Callable[[str | None], None] = lambda message: None


def build(config: McpConfig) -> MCPServer:
    """The server with its tools (run it with ``.run("stdio")``)."""
    server = MCPServer("stepaudio", instructions=INSTRUCTIONS, version=__version__, log_level="WARNING")

    @server.tool(
        name="ask",
        title="Ask about audio",
        description="Ask one question about one or more audio recordings (files or URLs). The model reasons "
        "first, then answers; the answer is the text result, and the whole record (reasoning, token usage, "
        "timings, the conversation's id and the turn) is the structured result. To ask a follow-up, pass that "
        "`conversation` id: the earlier questions, audio and answers are sent again, and new audio is optional. "
        "Recordings longer than about 15 minutes are answered in windows (progress is reported) and take minutes.",
    )
    async def ask(
        # Optional without a Python default (the SDK passes every argument), so it stays first.
        audio: Annotated[
            list[str],
            Field(
                default_factory=list,
                description="Audio files (paths) or http(s) URLs, in order; a follow-up in a conversation may "
                "give none.",
            ),
        ],
        question: Annotated[str, Field(description="The question about the audio.")],
        context: Context,
        conversation: Annotated[
            str | None, Field(description="Continue this conversation (the `conversation` of an earlier answer).")
        ] = None,
        think_budget: Annotated[int | None, Field(description="Most reasoning tokens.", ge=0)] = None,
        max_tokens: Annotated[int | None, Field(description="Most tokens to generate.", ge=1)] = None,
    ) -> CallToolResult:
        token = anyio.lowlevel.current_token()

        def on_windows(progress: MapProgress) -> None:
            message = (
                f"{progress.answered} of {progress.total} windows answered, {progress.completion_tokens:,} tokens"
                if progress.answered < progress.total
                else f"combining the answers of {progress.total} windows"
            )
            anyio.from_thread.run(context.report_progress, progress.answered, progress.total + 1, message, token=token)

        call = Call(config, audio, question, conversation, think_budget, max_tokens)
        return await _tool_call(lambda: call.run(on_windows), lambda record: (record["answer"] or "", record))

    @server.tool(
        name="loaded_engines",
        title="Loaded engines",
        description="The Step-Audio models kept loaded (resident engines and `stepaudio serve`s on this "
        "machine), as `stepaudio ps` lists them: model, settings, address, pid, GPU memory, idle time.",
    )
    async def loaded_engines_tool() -> CallToolResult:
        return await _tool_call(loaded_engines, lambda rows: (_engine_lines(rows), {"engines": rows}))

    return server


def loaded_engines() -> list[dict[str, str]]:
    """What `stepaudio ps` shows of each loaded engine, a dict per engine keyed by its column names
    (the one place this server reads the registry)."""
    from stepaudio_cli import ps_view
    from stepaudio_cli.resident import registry, status

    keys = [c.replace(" ", "_") for c in ps_view.COLUMNS]
    return [dict(zip(keys, ps_view.row(s))) for s in status.statuses(registry.read_entries())]


def _engine_lines(rows: list[dict[str, str]]) -> str:
    lines = [
        f"{r['model']} ({r['settings']}) at {r['address']}: {r['state']}, GPU memory {r['GPU_memory']}, "
        f"stops in {r['stops_in']}"
        for r in rows
    ]
    return "\n".join(lines) or "No model is loaded; the first ask loads one."


async def _tool_call(fn: Callable, shape: Callable) -> CallToolResult:
    """``fn()`` in a worker thread, its value made a result by ``shape`` (-> text, structured
    content); a failure is a tool error whose text is the one-line message `ask` would print."""
    try:
        value = await anyio.to_thread.run_sync(fn)
    except UserError as e:
        message = e.message
    except Exception as e:  # noqa: BLE001 - a bug of ours: one line to the caller, the server goes on
        text = " ".join(str(e).split())[:200]
        message = f"internal error: {type(e).__name__}{': ' + text if text else ''}"
    else:
        text, structured = shape(value)
        return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)
    return CallToolResult(content=[TextContent(type="text", text=message)], is_error=True)


@dataclasses.dataclass
class Call:
    """One ``ask`` tool call, run in a worker thread."""

    config: McpConfig
    audio: list[str]
    question: str
    conversation: str | None = None
    think_budget: int | None = None
    max_tokens: int | None = None

    def run(self, on_windows: Callable[[MapProgress], None]) -> dict:
        from stepaudio_cli import ask as core
        from stepaudio_cli import conversation
        from stepaudio_cli.logbook import Logbook
        from stepaudio_cli.records import ask_record
        from stepaudio_cli.resident import session

        if "-" in self.audio:
            raise UserError("`-` (standard input) carries the MCP messages here: give a path or an http(s) URL")
        if not self.audio and self.conversation is None:
            raise UserError(
                "give `audio` (paths or http(s) URLs); only a follow-up in a `conversation` may leave it out"
            )
        config = self.config
        # Each call its own log (sqlite3 connections stay in their thread); none with --no-log.
        log = Logbook() if config.log else None
        with contextlib.closing(log) if log else contextlib.nullcontext():
            convo = conversation.start(log, conversation_id=self.conversation)
            system = config.system if config.system is not None else convo.system
            request = core.prepare(
                self.audio, self.question, system, self._sampling(), self._thinking(), config.urls, convo.history
            )
            plan = core.plan(config.settings, request, config.windowing)  # before a resident engine loads
            with session(config.settings, config.keep_alive, config.on_status, sleep_for=config.sleep_for) as settings:
                result = asyncio.run(self._ask(settings, request, plan, on_windows))
            config.on_status(None)
            core.log_turn(
                log, convo, request, result, config.settings, on_warning=lambda m: config.on_status(f"warning: {m}")
            )
        return ask_record(request, result, conversation=convo.id, turn=convo.turn)

    async def _ask(self, settings: EngineSettings, request: Request, plan, on_windows) -> Result:
        from stepaudio_cli import ask as core

        return await core.ask(settings, request, plan, on_status=self.config.on_status, on_windows=on_windows)

    def _sampling(self) -> Sampling:
        sampling = self.config.sampling
        return sampling if self.max_tokens is None else dataclasses.replace(sampling, max_tokens=self.max_tokens)

    def _thinking(self) -> Thinking:
        """The server's reasoning settings, with this call's ``think_budget`` in place of its budget."""
        t = self.config.thinking
        if self.think_budget is None:
            return t
        return Thinking.from_options(self.think_budget, t.min_tokens, None, not t.enabled)
