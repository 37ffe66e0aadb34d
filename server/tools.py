"""MCP tools, through the official `mcp` SDK: `list_knowledge_bases`, `search` and `ask`, for
assistants that speak the Model Context Protocol.

The same server is served two ways: over stdio by `rag mcp` (a local process of the user's own,
which may use every base), and over streamable HTTP at `/mcp` in `rag api`, where the API's keys
and roles apply (the key is checked by server.auth's Gate before the MCP app sees the request,
and each tool checks the base it is asked about).  The HTTP endpoint is stateless: any replica
can answer any call.

`search` and `ask` answer exactly as `POST /v1/kbs/{kb}/search` and the chat API do.
"""

from __future__ import annotations

from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp

from rag.store import list_bases, open_store
from server.answers import answer_json, answer_now
from server.auth import LOCAL, Principal
from server.errors import APIError
from server.search import SearchRequest
from server.search import search as search_base
from server.services import Services

INSTRUCTIONS = (
    "Knowledge bases of documents (PDF, Word, Markdown, text, HTML, spreadsheets). Call list_knowledge_bases "
    "first; search returns passages with file and page; ask answers a question from one base with numbered "
    "citations, or says the documents do not hold the answer (found: false)."
)


def _caller(ctx: Context) -> Principal:
    """Over HTTP, the key the Gate identified; over stdio, the local user."""
    request = ctx.request_context.request
    state = getattr(request, "state", None)
    return getattr(state, "principal", LOCAL) if request is not None else LOCAL


def _checked(ctx: Context, kb: str) -> None:
    try:
        _caller(ctx).require(kb, "read")
    except APIError as exc:
        raise ToolError(exc.message) from exc


def mcp_server(svc: Services) -> MCPServer:
    """The MCP server over `svc`'s knowledge bases."""
    server: MCPServer = MCPServer("rag", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool()
    def list_knowledge_bases(ctx: Context) -> dict[str, Any]:
        """The knowledge bases you may search and ask, with their size."""
        principal = _caller(ctx)
        bases = []
        for name in list_bases(svc.settings):
            if principal.may(name, "read"):
                with open_store(svc.settings, name) as kb:
                    bases.append({"name": name, "documents": len(kb.documents()), "passages": kb.chunk_count()})
        return {"knowledge_bases": bases}

    @server.tool()
    def search(
        kb: str,
        query: str,
        ctx: Context,
        top_k: int = 5,
        mode: Literal["hybrid", "dense", "bm25"] | None = None,
    ) -> dict[str, Any]:
        """Passages of knowledge base `kb` that match `query`, best first, each with its file, page
        and score (mode: hybrid = meaning and keywords, dense = meaning, bm25 = keywords)."""
        _checked(ctx, kb)
        try:
            return search_base(svc.bases, kb, SearchRequest(query=query, top_k=top_k, mode=mode)).model_dump()
        except APIError as exc:
            raise ToolError(exc.message) from exc

    @server.tool()
    def ask(kb: str, question: str, ctx: Context) -> dict[str, Any]:
        """Answer `question` from knowledge base `kb`: the answer with [n] markers and the cited
        passages (file, page, text); found is false when the documents do not hold the answer."""
        _checked(ctx, kb)
        try:
            answer = answer_now(svc.bases.qa(kb), svc.slots, question)
        except APIError as exc:
            raise ToolError(exc.message) from exc
        if answer.error and not answer.answer:
            raise ToolError(f"the LLM failed: {answer.error}")
        return answer_json(answer)

    return server


def http_app(server: MCPServer, host: str) -> StreamableHTTPASGIApp:
    """The server as an ASGI app for `/mcp`, stateless (any replica answers any call) with JSON
    replies.  The caller runs `server.session_manager.run()` for the app's lifetime."""
    server.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True, host=host)
    return StreamableHTTPASGIApp(server.session_manager)
