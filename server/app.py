"""The HTTP server of `rag api`: one FastAPI app over the core, built from the settings.

    /v1/chat/completions, /v1/models   OpenAI-compatible chat, a model per knowledge base (server.chat)
    /v1/kbs, /v1/kbs/{kb}/documents    knowledge bases, uploads, documents (server.kbs)
    /v1/jobs/{id}                      ingest jobs (server.jobs)
    /v1/kbs/{kb}/search                retrieval only (server.search)
    /mcp                               the MCP tools over streamable HTTP (server.tools)
    /docs, /openapi.json, /health      the API described, and a check for load balancers

Every request outside the last line passes server.auth's Gate (key, role, rate limit) and
server.limits' BodyLimit first; every error has server.errors' one shape.  The process keeps
nothing a replica would need from it: the knowledge bases are in the store, the keys and the
ingest jobs' records in the data directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

import anyio.to_thread
from fastapi import FastAPI
from starlette.routing import Route

from rag.config import Settings
from rag.embed import Embedder
from server import chat, errors, kbs, search, tools
from server.auth import Gate
from server.limits import BodyLimit
from server.services import Services

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

DESCRIPTION = """Answers from your documents, with citations you can check.

Authenticate with `Authorization: Bearer <key>` (keys come from `rag keys create`); with no keys
created, the server answers local programs only, on 127.0.0.1. Errors are always
`{"error": {"message", "type", "code"}}`."""


def create_app(
    settings: Settings,
    *,
    host: str | None = None,
    embedder: Embedder | None = None,
    chat_model: BaseChatModel | None = None,
    warm_up: bool = False,
) -> FastAPI:
    """The app for `settings`.

    :param host: the address it will listen on (default: api.host); keyless use is allowed only
        when that is a loopback address.
    :param embedder: an embedder already loaded, to share (default: one of its own).
    :param chat_model: a chat model already loaded, to share (default: loaded for the first answer).
    :param warm_up: load the embedding model before listening, so the first search does not wait
        for it (and a load balancer's /health says ready only when searches can be answered).

    Usage::

        app = create_app(load_settings())
        uvicorn.run(app, host="127.0.0.1", port=8080)
    """
    host = host or settings.api.host
    svc = Services.create(settings, host, embedder, chat_model)
    mcp = tools.mcp_server(svc)
    mcp_endpoint = tools.http_app(mcp, host)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await anyio.to_thread.run_sync(lambda: svc.bases.embedder.model)
        async with mcp.session_manager.run():
            yield

    app = FastAPI(title="rag", version=_version(), description=DESCRIPTION, lifespan=lifespan)
    app.state.services = svc
    errors.install(app)
    for module in (chat, search, kbs):
        app.include_router(module.router)
    app.router.routes.append(Route("/mcp", endpoint=mcp_endpoint))

    @app.get("/health", tags=["server"], summary="Liveness, for load balancers (no key needed)")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    api = settings.api
    app.add_middleware(
        BodyLimit,
        max_request_mb=api.max_request_mb,
        max_upload_mb=api.max_upload_mb,
        max_upload_files=api.max_upload_files,
    )
    app.add_middleware(Gate, access=svc.access)  # added last: runs first, so a stranger learns nothing
    return app


def _version() -> str:
    try:
        return version("rag-docqa")
    except PackageNotFoundError:
        return "0"
