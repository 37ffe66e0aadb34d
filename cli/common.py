"""What every command shares: exit statuses, the group that turns problems into one line, the
consoles, and the settings, knowledge base and answering stack a command works with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from rag.config import InvalidKBName, Settings
from rag.reranker import RerankerError
from rag.store import KBError, KBLocked, KBReadOnly, Store, StoreUnavailable, open_store
from rag.terminal import printable

if TYPE_CHECKING:
    from rag.qa import QA

# Exit statuses, the same for every command: 1 the work failed (said why), 2 a usage or
# configuration error, 69 (EX_UNAVAILABLE) the store cannot be reached or refused the
# credentials, 75 (EX_TEMPFAIL) the knowledge base is busy: try again.
FAILED = 1
USAGE_ERROR = 2
UNAVAILABLE = 69
BUSY = 75

out = Console()
err = Console(stderr=True)


class OneLineErrors(typer.core.TyperGroup):
    """Problems any command can meet, each turned into one line and its exit status here, once:
    a knowledge-base name that is not one, a base that is busy or read-only, and an operating
    system error (a folder that cannot be created, a disk that is full)."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (InvalidKBName, KBError) as exc:
            raise fail(str(exc), exit_code(exc)) from exc
        except RerankerError as exc:
            raise fail(str(exc), USAGE_ERROR) from exc
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}", FAILED) from exc


def exit_code(exc: Exception) -> int:
    """The exit status for a knowledge-base problem (see FAILED, USAGE_ERROR, BUSY)."""
    if isinstance(exc, KBLocked):
        return BUSY
    if isinstance(exc, StoreUnavailable):
        return UNAVAILABLE
    if isinstance(exc, KBReadOnly):
        return FAILED
    return USAGE_ERROR


def fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    """Say what went wrong on one line of stderr; `raise fail(...)` ends the command with `code`."""
    # soft_wrap: off a terminal rich would break the line at 80 columns, inside a command the
    # message tells the user to run
    err.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def note(message: str) -> None:
    """A line of news on stderr (a model being downloaded, say)."""
    err.print(message, highlight=False, soft_wrap=True)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings the app's callback loaded once for this command."""
    return ctx.obj


def open_kb(settings: Settings, name: str | None) -> Store:
    """The knowledge base `name` (None: settings.default_kb)."""
    return open_store(settings, settings.kb_name(name))


def answering(settings: Settings, kb: str | None) -> QA:
    """rag.stack's answering stack over `kb`; loading the chat model, which waits for the first
    answer that needs it, shows a spinner."""
    from rag.stack import answering as stack

    return stack(settings, settings.kb_name(kb), notify=note, loading=lambda what: err.status(f"loading {what} ..."))
