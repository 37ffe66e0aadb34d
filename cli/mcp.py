"""`rag mcp`: the MCP tools over stdio, for an assistant that starts this command itself."""

from __future__ import annotations

import typer

from cli.common import settings_of


def mcp(ctx: typer.Context) -> None:
    """Serve the MCP tools (list_knowledge_bases, search, ask) over stdio, to an assistant.

    An MCP-capable assistant runs this command itself (its configuration: README, "Use it from
    other programs").  It acts as you, on every knowledge base; `rag api` serves the same tools
    over HTTP at /mcp, with API keys.  The models load on the first call that needs them.
    """
    from server.services import Services
    from server.tools import mcp_server

    svc = Services.create(settings_of(ctx), "127.0.0.1")
    mcp_server(svc).run("stdio")
