"""The `rag` app: the global --config option, which loads the settings once for every command,
and the commands, each group from its own module."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from cli.api import api
from cli.ask import ask, chat
from cli.common import OneLineErrors, fail
from cli.config import config_app
from cli.eval import eval_app
from cli.ingest import ingest
from cli.kb import kb_app
from cli.keys import keys_app
from cli.mcp import mcp
from cli.tune import serve, tune_app
from cli.ui import ui
from rag.config import ConfigError, load_settings

app = typer.Typer(
    cls=OneLineErrors,
    help="Ask questions of your documents: ingest files into a knowledge base, then query it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="settings file (default: ./rag.toml if present)")
    ] = None,
) -> None:
    """Settings come from rag.toml (or --config) with RAG_* environment overrides."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Before torch loads: idle OpenMP threads sleep rather than spin, so a busy second core does
    # not slow query encoding tenfold (bench/query.py measured 28 ms -> 330 ms without it).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        ctx.obj = load_settings(config)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


# Commands are listed in `rag --help` in this order, then the groups.
for command in (ingest, ask, chat, ui, api, mcp, serve):
    app.command()(command)
app.add_typer(kb_app, name="kb")
app.add_typer(keys_app, name="keys")
app.add_typer(config_app, name="config")
app.add_typer(eval_app, name="eval")
app.add_typer(tune_app, name="tune")


def _flow_help(typer_app: typer.Typer) -> None:
    """Typer keeps the single line breaks of a docstring's later paragraphs, so `--help` broke
    sentences wherever the source wraps them; join each paragraph into one line for the terminal
    to wrap."""
    for info in typer_app.registered_commands:
        doc = info.help or inspect.getdoc(info.callback)
        if doc:
            info.help = "\n\n".join(re.sub(r"\s*\n\s*", " ", p.strip()) for p in doc.split("\n\n"))
    for group in typer_app.registered_groups:
        _flow_help(group.typer_instance)


_flow_help(app)
