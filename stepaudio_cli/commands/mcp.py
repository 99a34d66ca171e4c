"""stepaudio mcp: serve `ask` to agents over the Model Context Protocol (stdio)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.errors import UserError

if TYPE_CHECKING:
    from stepaudio_cli.commands.conversations import ConversationChoice
    from stepaudio_cli.engines.settings import EngineSettings
    from stepaudio_cli.request import Sampling, Thinking
    from stepaudio_cli.url_audio import UrlFetching
    from stepaudio_cli.windows import Windowing

MCP_EXTRA = "pip install 'stepaudio[mcp]'"


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    options.URLS,
    options.CONVERSATION,
    # max_num_seqs: a resident engine's, as ask's; a call names its conversation, the server takes --no-log only
    leave_out=("max_num_seqs", "continue_conversation", "conversation"),
)
def mcp(
    ctx: typer.Context,
    *,
    engine: EngineSettings,
    sampling: Sampling,
    system: str | None,
    thinking: Thinking,
    windowing: Windowing,
    urls: UrlFetching,
    conversation: ConversationChoice,
    keep_alive: float | None,
    sleep_for: float | None,
) -> None:
    """Serve `ask` to agents (Claude Desktop, Claude Code, ...) over MCP on stdin/stdout."""
    try:
        from stepaudio_cli import mcp_server
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise UserError(f"the MCP server needs the official MCP SDK: {MCP_EXTRA}") from None
    term = options.terminal(ctx)
    if keep_alive == 0 and not engine.remote:
        raise UserError("stepaudio mcp keeps its engine between calls: give --keep-alive above 0, or --server URL")
    config = mcp_server.McpConfig(
        settings=engine,
        keep_alive=keep_alive,
        sleep_for=sleep_for,
        system=system,
        sampling=sampling,
        thinking=thinking,
        windowing=windowing,
        urls=urls,
        log=conversation.log,
        on_status=lambda message: message and term.info(message),
    )
    term.info(f"stepaudio MCP server on stdio ({', '.join(engine.servers) if engine.remote else engine.model})")
    mcp_server.build(config).run("stdio")
