"""`rag api`: serve the knowledge bases over HTTP (the server package) with uvicorn."""

from __future__ import annotations

import math
import socket
from typing import Annotated

import typer

from cli.common import FAILED, err, fail, settings_of


def api(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="address to listen on (default: api.host = 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="port (default: api.port, 8080)")] = None,
) -> None:
    """Serve the knowledge bases to other programs: an OpenAI-compatible chat API (a model per
    knowledge base), search, uploads with ingest jobs, and MCP tools at /mcp; described at /docs.

    With no API keys it listens on 127.0.0.1 only, and every program on this machine may use every
    knowledge base; it refuses any other address until a key exists (`rag keys create`).  Once one
    does, every request needs a key.

    Exit status: 0 stopped (Ctrl-C), 1 it could not start (the port is taken, the key file is
    unreadable), 2 a usage error (another address than loopback while no API key exists).
    """
    from rag.config import is_loopback
    from server.keys import KeyFileError, KeyStore

    settings = settings_of(ctx)
    host = host or settings.api.host
    port = port or settings.api.port
    try:
        keys = KeyStore(settings.keys_file).all_keys()
    except KeyFileError as exc:
        raise fail(str(exc), FAILED) from exc
    if not keys and not is_loopback(host):
        raise fail(
            f"refusing to listen on {host} with no API keys: anyone who can reach it could read, change and delete "
            "every knowledge base. Create a key first (rag keys create --name NAME --kb '*' --role admin), or "
            "listen on 127.0.0.1"
        )
    if keys:
        err.print(f"{len(keys)} API key(s): every request needs one (rag keys list)", highlight=False)
    else:
        err.print(
            "no API keys: serving 127.0.0.1 only, where every program on this machine may use every knowledge "
            "base; create keys with `rag keys create` to require them",
            highlight=False,
        )
    _check_free(host, port)
    shown = f"[{host}]" if ":" in host else host
    err.print(
        f"rag api: http://{shown}:{port}/v1 (API docs at /docs, MCP at /mcp), once the embedding model "
        "has loaded; Ctrl-C stops it",
        highlight=False,
        markup=False,
    )
    _serve(settings, host, port)


def _serve(settings, host: str, port: int) -> None:
    import uvicorn

    from server.app import create_app

    api = settings.api
    config = uvicorn.Config(
        create_app(settings, host=host, warm_up=True),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=math.ceil(api.keep_alive_s),
        limit_concurrency=api.max_connections,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    try:
        server.run()  # exits 1 itself when it cannot listen after all, saying why
    except KeyboardInterrupt:  # uvicorn has shut down cleanly, then re-raised the Ctrl-C
        return


def _check_free(host: str, port: int) -> None:
    """Fail at once, saying why, when the address cannot be listened on (the port is taken), rather
    than after the model has loaded."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", FAILED) from exc
