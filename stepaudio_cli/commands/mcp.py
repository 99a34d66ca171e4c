"""stepaudio mcp: serve `ask` to agents over the Model Context Protocol (stdio)."""

from __future__ import annotations

import typer

from stepaudio_cli.commands import options
from stepaudio_cli.defaults import DEFAULT_MAX_NUM_SEQS
from stepaudio_cli.errors import UserError

MCP_EXTRA = "pip install 'stepaudio[mcp]'"


@options.takes(
    options.SAMPLING,
    options.REASONING,
    options.REMOTE,
    options.ENGINE,
    options.LONG_RECORDINGS,
    options.URLS,
    leave_out=("max_num_seqs",),  # a resident engine's, as ask's
)
def mcp(ctx: typer.Context) -> None:
    """Serve `ask` to agents (Claude Desktop, Claude Code, ...) over MCP on stdin/stdout."""
    from stepaudio_cli.resident import parse_keep_alive

    try:
        from stepaudio_cli import mcp_server
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("mcp", "mcp_types"):
            raise
        raise UserError(f"the MCP server needs the official MCP SDK: {MCP_EXTRA}") from None
    term = options.terminal(ctx)
    p = ctx.params
    keep = parse_keep_alive(p["keep_alive"])
    settings = options.engine_settings(ctx, max_num_seqs=DEFAULT_MAX_NUM_SEQS)
    if keep == 0 and not settings.remote:
        raise UserError("stepaudio mcp keeps its engine between calls: give --keep-alive above 0, or --server URL")
    config = mcp_server.McpConfig(
        settings=settings,
        keep_alive=keep,
        system=p["system"],
        sampling=options.sampling(ctx),
        thinking=(p["think_budget"], p["min_think"], p["effort"], p["no_think"]),
        windowing=options.windowing(ctx),
        urls=options.url_fetching(ctx),
        on_status=lambda message: message and term.info(message),
    )
    options.thinking(ctx)  # refuse contradictory reasoning options now, not at every call
    term.info(f"stepaudio MCP server on stdio ({', '.join(settings.servers) if settings.remote else settings.model})")
    mcp_server.build(config).run("stdio")
