"""`rag kb list | show | rm | delete | copy`: knowledge bases in the store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from cli.common import err, fail, open_kb, out, settings_of
from cli.display import display_path, human_size, progress_bar
from ingest.loaders import IMAGE_SUFFIXES
from ingest.ocr import ocr_pages
from rag.store import delete_base, list_bases, open_store, store_exists
from rag.terminal import printable

kb_app = typer.Typer(help="List, inspect and edit knowledge bases.", no_args_is_help=True)


@kb_app.command("list")
def kb_list(ctx: typer.Context) -> None:
    """Knowledge bases in the store (store.backend: the data directory, or Milvus)."""
    settings = settings_of(ctx)
    bases = list_bases(settings)
    if not bases:
        where = settings.data_dir if settings.store.backend == "local" else f"Milvus at {settings.store.uri}"
        out.print(f"no knowledge bases in {where}; create one with `rag ingest PATH --kb NAME`")
        return
    table = Table("name", "documents", "chunks", "model", "size", "generation")
    for name in bases:
        with open_store(settings, name) as base:
            meta = base.meta()
            table.add_row(
                name + (" (read-only)" if base.read_only else ""),
                str(len(base.documents())),
                str(base.chunk_count()),
                escape(printable(str(meta["embed_model"]), one_line=True)),
                human_size(base.size_on_disk()),
                str(meta["generation"]),
            )
    out.print(table)


@kb_app.command("show")
def kb_show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="knowledge base")]) -> None:
    """Documents, chunk counts, model, size on disk, and the files that failed and why."""
    with open_kb(settings_of(ctx), name) as base:
        meta = base.meta()
        docs = base.documents()
        out.print(f"[bold]{name}[/]  {escape(printable(base.location, one_line=True))}", highlight=False)
        if base.read_only:
            out.print("[yellow]read-only[/]: it can be searched, but nothing can be added, changed or removed")
        out.print(
            f"model {meta['embed_model']} (dim {meta['embed_dim']}) | {len(docs)} documents | "
            f"{base.chunk_count()} chunks | {meta['index']} | {human_size(base.size_on_disk())} | "
            f"generation {meta['generation']}",
            highlight=False,
        )
        table = Table("document", "status", "pages", "chunks", "size")
        by_id = {d.doc_id: d for d in docs}
        for d in docs:
            status = d.status
            if d.status == "duplicate" and d.content_of in by_id:
                status = f"duplicate of {Path(by_id[d.content_of].path).name}"
            table.add_row(
                escape(display_path(d.path)),
                escape(printable(status, one_line=True)),
                "" if d.pages is None else str(d.pages),
                str(d.chunks),
                "" if d.size is None else human_size(d.size),
            )
        out.print(table)
        _show_ocr(base, [d for d in docs if d.status == "ok"], settings_of(ctx).ingest.ocr_low_confidence)
        bad = [d for d in docs if d.status in ("failed", "empty")]
        if bad:
            out.print("[bold red]not ingested[/]")
            for d in bad:
                out.print(
                    f"  {display_path(d.path)} ({d.status}): {printable(d.error or '')}", highlight=False, markup=False
                )


OCR_SUFFIXES = (".pdf", *IMAGE_SUFFIXES)


def _show_ocr(base, docs, low: float) -> None:
    """Pages read with OCR, their mean recognition score, and the low-scoring ones flagged; and
    pages of a document OCR read nothing on."""
    rows = []
    for d in docs:
        if Path(d.path).suffix.lower() not in OCR_SUFFIXES:
            continue
        scores = ocr_pages(base, d.doc_id)
        if scores:
            flagged = [f"{n} ({s:.3f})" for n, s in scores.items() if s < low]
            mean = sum(scores.values()) / len(scores)
            line = f"  {display_path(d.path)}: {_pages(sorted(scores))}, mean score {mean:.2f}"
            if flagged:
                line += f"; [yellow]low confidence[/] (< {low:g}, ingest.ocr_low_confidence): {', '.join(flagged)}"
            rows.append(line)
        if d.error:
            rows.append(f"  {display_path(d.path)}: [yellow]{escape(printable(d.error))}[/]")
    if rows:
        out.print("[bold]read with OCR[/]")
        for row in rows:
            out.print(row, highlight=False)


def _pages(numbers: list[int | None]) -> str:
    shown = ", ".join(str(n) for n in numbers[:30]) + (f" and {len(numbers) - 30} more" if len(numbers) > 30 else "")
    return f"page{'s' if len(numbers) > 1 else ''} {shown}"


@kb_app.command("rm")
def kb_rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="knowledge base")],
    files: Annotated[list[str], typer.Argument(help="documents to remove: path, or file name if unique")],
) -> None:
    """Remove documents (and their vectors) from a knowledge base; nothing is re-embedded."""
    with open_kb(settings_of(ctx), name) as base, base.writer() as writer:  # a base it may not change says so first
        targets = [_match_document(base.documents(), f) for f in files]
        chunks = writer.remove_documents(d.doc_id for d in targets)
        gen = writer.commit()
    out.print(f"removed {len(targets)} document(s), {chunks} chunk(s); generation {gen}")


def _match_document(docs, wanted: str):
    exact = os.path.abspath(wanted)
    hits = [d for d in docs if d.path == exact] or [
        d for d in docs if d.path.endswith(os.sep + wanted) or Path(d.path).name == wanted
    ]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise fail(f"no document matches {wanted!r}; see `rag kb show` for the paths")
    names = "\n  ".join(printable(d.path, one_line=True) for d in hits)
    raise fail(f"{wanted!r} matches {len(hits)} documents; give the full path:\n  {names}")


@kb_app.command("delete")
def kb_delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="knowledge base")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a whole knowledge base: in the local store, only a knowledge base's own folder inside
    the data directory, never a symbolic link or any other folder; in Milvus, its collections.

    Exit status: 0 deleted, 2 no such knowledge base, 75 it is being written (try again later).
    """
    settings = settings_of(ctx)
    name = settings.kb_name(name)
    if not store_exists(settings, name):
        raise fail(f"no knowledge base named {name!r}; see `rag kb list`")
    if not yes and not typer.confirm(f"delete knowledge base {name!r}?"):
        raise typer.Exit(1)
    delete_base(settings, name)
    out.print(f"deleted {name}")


@kb_app.command("copy")
def kb_copy(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="knowledge base to copy (in store.backend)")],
    dest: Annotated[str, typer.Argument(help="name of the new copy")],
    to_store: Annotated[
        str | None, typer.Option("--to-store", help="local | milvus: where the copy goes (default: store.backend)")
    ] = None,
) -> None:
    """Copy a knowledge base, to the same store or the other one, without re-embedding: its
    vectors are read from the source, so a base built locally moves to Milvus (or back) as it is.

    Exit status: 0 copied, 2 no such base or the copy's name is taken, 75 the source is busy.
    """
    from rag.store.copy import copy_base

    if to_store not in (None, "local", "milvus"):
        raise fail(f"--to-store must be local or milvus, not {to_store!r}")
    settings = settings_of(ctx)
    with progress_bar(console=err) as bar:
        task = bar.add_task("documents", total=None)
        copied = copy_base(
            settings, source, dest, to_store, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    where = to_store or settings.store.backend
    out.print(f"copied {copied} document(s) from {source!r} to {dest!r} in the {where} store", highlight=False)
