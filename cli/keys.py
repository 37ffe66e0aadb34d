"""`rag keys create | list | revoke`: the API keys of `rag api` (server.keys keeps them, hashed)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import FAILED, err, fail, out, settings_of
from rag.terminal import printable

keys_app = typer.Typer(help="Create, list and revoke the API keys of `rag api`.", no_args_is_help=True)


def _store(ctx: typer.Context):
    from server.keys import KeyStore

    return KeyStore(settings_of(ctx).keys_file)


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="who or what the key is for, e.g. 'open-webui' or 'alice'")],
    kb: Annotated[
        list[str],
        typer.Option("--kb", help="knowledge base it may use; a pattern ('team-*', '*') or repeated for several"),
    ],
    role: Annotated[
        str, typer.Option("--role", help="read (ask, search) | write (+ add, remove documents) | admin (+ bases)")
    ] = "read",
) -> None:
    """Make an API key and print it, once: only its hash is kept.

    The key goes to standard output alone (`KEY=$(rag keys create ...)`), what it may do to
    standard error.  A running `rag api` accepts it from its next request.

    Exit status: 0 created, 2 a usage error (a name already taken, a bad pattern or role),
    1 the key file cannot be written.
    """
    from server.keys import KeyFileError, KeyProblem

    try:
        key, token = _store(ctx).create(name, kb, role)  # type: ignore[arg-type]
    except KeyProblem as exc:
        raise fail(str(exc)) from exc
    except KeyFileError as exc:
        raise fail(str(exc), FAILED) from exc
    err.print(
        f"created API key {key.name!r} ({key.id}): {key.role} on {', '.join(key.kbs)}. It is shown only now; "
        "keep it secret, and send it as 'Authorization: Bearer <key>':",
        highlight=False,
        markup=False,
    )
    out.print(token, highlight=False, markup=False, soft_wrap=True)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """The API keys: name, id, role, knowledge bases, and the first characters of each key."""
    from server.keys import KeyFileError

    store = _store(ctx)
    try:
        keys = store.all_keys()
    except KeyFileError as exc:
        raise fail(str(exc), FAILED) from exc
    if not keys:
        out.print(
            "no API keys: `rag api` serves 127.0.0.1 only, to anyone on this machine. "
            "Create one with `rag keys create --name NAME --kb PATTERN --role read|write|admin`",
            highlight=False,
        )
        return
    table = Table("name", "id", "role", "knowledge bases", "key starts", "created")
    for k in keys:
        table.add_row(
            escape(printable(k.name, one_line=True)),
            k.id,
            k.role,
            escape(", ".join(k.kbs)),
            k.prefix + "…",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at)),
        )
    out.print(table)
    out.print(f"kept in {escape(printable(str(store.path), one_line=True))}", highlight=False)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context, which: Annotated[str, typer.Argument(help="the key's name or id (see `rag keys list`)")]
) -> None:
    """Revoke an API key: a running `rag api` refuses it from its next request.

    Exit status: 0 revoked, 2 no such key, 1 the key file cannot be written.
    """
    from server.keys import KeyFileError, KeyProblem

    try:
        key = _store(ctx).revoke(which)
    except KeyProblem as exc:
        raise fail(str(exc)) from exc
    except KeyFileError as exc:
        raise fail(str(exc), FAILED) from exc
    out.print(f"revoked API key {printable(key.name, one_line=True)!r} ({key.id})", highlight=False, markup=False)
