"""`rag ui`: start the web UI (Streamlit; the UI itself is the ui package)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.common import err, fail, settings_of


def ui(
    ctx: typer.Context,
    host: Annotated[
        str | None, typer.Option("--host", help="address to listen on (default: ui.host = 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535, help="port (default: ui.port, 8501)")] = None,
) -> None:
    """Open the web UI: chat with citations, manage knowledge bases, look at evaluations."""
    import importlib.util
    import sys

    from rag.config import is_loopback
    from ui.launch import streamlit_command, streamlit_env

    if importlib.util.find_spec("streamlit") is None:
        raise fail("the web UI needs streamlit: pip install streamlit")
    settings = settings_of(ctx)
    host = host or settings.ui.host
    port = port or settings.ui.port
    if not is_loopback(host) and settings.ui.password is None:
        err.print(
            f"[yellow]warning:[/] listening on {host} without a password: anyone who can reach this machine can "
            "read and change your knowledge bases. Set ui.password (or RAG_UI__PASSWORD).",
            highlight=False,
        )
    config = ctx.find_root().params.get("config")
    cmd = streamlit_command(host, port, settings.ui.max_upload_mb, config)
    err.print(f"rag ui: open http://{host}:{port} in a browser (Ctrl-C stops it)", highlight=False)
    sys.stderr.flush()
    os.execve(cmd[0], cmd, streamlit_env(os.environ))
