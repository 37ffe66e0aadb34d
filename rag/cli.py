"""`rag`: the command line.  Settings are built here once and passed down."""

from __future__ import annotations

import contextlib
import inspect
import os
import re
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from rag.config import ConfigError, InvalidKBName, Settings, load_settings
from rag.store import (
    KBError,
    KBLocked,
    KBReadOnly,
    Store,
    StoreUnavailable,
    delete_base,
    list_bases,
    open_store,
    store_exists,
)
from rag.terminal import printable

# Exit statuses, the same for every command: 1 the work failed (said why), 2 a usage or
# configuration error, 69 (EX_UNAVAILABLE) the store cannot be reached or refused the
# credentials, 75 (EX_TEMPFAIL) the knowledge base is busy: try again.
FAILED = 1
USAGE_ERROR = 2
UNAVAILABLE = 69
BUSY = 75


class _OneLineErrors(typer.core.TyperGroup):
    """Problems any command can meet, each turned into one line and its exit status here, once:
    a knowledge-base name that is not one, a base that is busy or read-only, and an operating
    system error (a folder that cannot be created, a disk that is full)."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (InvalidKBName, KBError) as exc:
            raise _fail(str(exc), exit_code(exc)) from exc
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise _fail(f"{exc.strerror or exc}{where}", FAILED) from exc


def exit_code(exc: Exception) -> int:
    """The exit status for a knowledge-base problem (see FAILED, USAGE_ERROR, BUSY)."""
    if isinstance(exc, KBLocked):
        return BUSY
    if isinstance(exc, StoreUnavailable):
        return UNAVAILABLE
    if isinstance(exc, KBReadOnly):
        return FAILED
    return USAGE_ERROR


app = typer.Typer(
    cls=_OneLineErrors,
    help="Ask questions of your documents: ingest files into a knowledge base, then query it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
kb_app = typer.Typer(help="List, inspect and edit knowledge bases.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)


def _fail(message: str, code: int = USAGE_ERROR) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False)
    return typer.Exit(code)


def progress_bar(*extra: ProgressColumn, console: Console = err) -> Progress:
    """The bar of every long `rag` job (ingest, evaluation, training data, training): description,
    bar, done/total, any extra columns (the file being read, the training loss), elapsed and
    remaining time, on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
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
        raise _fail(str(exc)) from exc


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


def _open_kb(settings: Settings, name: str | None) -> Store:
    return open_store(settings, settings.kb_name(name))


# ---- ingest --------------------------------------------------------------------------------
@app.command()
def ingest(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="files and folders to ingest (folders recursively)")],
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base name (default: settings.default_kb)")] = None,
    glob: Annotated[
        str | None, typer.Option("--glob", help="only files whose name or path matches, e.g. '*.pdf'")
    ] = None,
    sync: Annotated[bool, typer.Option("--sync", help="also remove documents whose files are gone from PATHS")] = False,
) -> None:
    """Load, chunk and embed documents into a knowledge base.

    Re-running skips unchanged files and replaces changed ones. Exit status: 0 all files
    ingested, 1 some could not be (the rest are committed), 2 usage or configuration error,
    75 the knowledge base is being written by another process (try again later).
    """
    from ingest.cli_progress import RichProgress
    from ingest.pipeline import IngestPipeline, open_for_ingest
    from rag.embed import Embedder
    from rag.models import ModelNotAvailable

    settings = _settings(ctx)
    name = settings.kb_name(kb)
    embedder = Embedder(settings.embed)
    try:
        base = open_for_ingest(settings, name, embedder)
        pipeline = IngestPipeline(settings, embedder, base)
        with RichProgress(err) as progress:
            report = pipeline.run(paths, pattern=glob, sync=sync, progress=progress)
    except KBError as exc:
        raise _fail(str(exc), exit_code(exc)) from exc
    except (ModelNotAvailable, ValueError) as exc:
        raise _fail(str(exc)) from exc
    _print_report(name, report)
    raise typer.Exit(report.exit_code)


def _print_report(name: str, report) -> None:
    out.print(f"[bold]ingest into {name!r}[/] -> generation {report.generation}", highlight=False)
    table = Table(box=box.SIMPLE)
    table.add_column("files")
    table.add_column("", justify="right")
    table.add_column("chunks")
    table.add_column("", justify="right")
    files = ["added", "updated", "unchanged", "duplicate", "removed", "failed", "empty"]
    chunks = [
        ("written", str(report.chunks_written)),
        ("seconds", f"{report.seconds:.1f}"),
        ("chunks/s", f"{report.chunks_per_second:.1f}"),
    ]
    for i, key in enumerate(files):
        right = chunks[i] if i < len(chunks) else ("", "")
        table.add_row(key, str(getattr(report, key)), *right)
    out.print(table)
    if report.interrupted:
        out.print("[yellow]interrupted[/]: finished files are committed; run the same command to continue.")
    elif not (report.added or report.updated or report.removed or report.duplicate or report.problems):
        out.print("nothing new: every file is already in the knowledge base.")
    if report.reindexed and not report.interrupted:
        out.print("rebuilt the keyword (BM25) index from the stored chunks for this version of rag.")
    if report.dense_converted and not report.interrupted:
        out.print(f"converted the vector index to {report.dense_converted} (ingest.dense_index).")
    if report.problems:
        out.print(f"[red]{len(report.problems)} file(s) not ingested[/] (see `rag kb show {name}`).")
    if report.unsupported:
        kinds = report.unsupported.most_common()
        listed = ", ".join(f"{ext} ({n})" for ext, n in kinds[:8]) + (", …" if len(kinds) > 8 else "")
        count = sum(report.unsupported.values())
        out.print(f"left out {count} file(s) in formats rag does not read: {listed}", highlight=False)


# ---- ask / chat ----------------------------------------------------------------------------
ModeOption = Annotated[str | None, typer.Option("--mode", help="hybrid | dense | bm25 (default: retrieve.mode)")]
TopKOption = Annotated[
    int | None,
    typer.Option("--top-k", min=1, help="passages retrieved; those that clear the relevance gate go to the LLM"),
]
GlobOption = Annotated[
    str | None, typer.Option("--only", help="only documents whose path or name matches, e.g. '*.pdf'")
]


def _qa(settings: Settings, kb: str | None):  # -> rag.qa.QA (imports torch lazily)
    from rag.embed import Embedder
    from rag.llm import make_chat_model
    from rag.qa import QA
    from rag.retrieve import Retriever

    base = _open_kb(settings, kb)
    retriever = Retriever(base, Embedder(settings.embed), settings.retrieve)

    def chat_model():  # first use only: a "not found" answer never loads the LLM
        with err.status(f"loading {settings.llm.backend} model {settings.llm.model} ..."):
            return make_chat_model(settings, notify=lambda m: err.print(m, highlight=False))

    return QA(retriever, settings, chat_model)


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "hybrid", "dense", "bm25"):
        raise _fail(f"--mode must be hybrid, dense or bm25, not {mode!r}")


@app.command()
def ask(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="the question, in English or Chinese")],
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base (default: settings.default_kb)")] = None,
    mode: ModeOption = None,
    top_k: TopKOption = None,
    only: GlobOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON object instead of streaming")] = False,
) -> None:
    """Answer a question from a knowledge base, streaming, with numbered citations to file and page.

    Exit status: 0 answered (or honestly not found), 1 the LLM failed (the passages are still shown).
    """
    import json

    from rag.retrieve import Filters

    _check_mode(mode)
    qa = _qa(_settings(ctx), kb)
    filters = Filters(path_glob=only) if only else None
    if json_out:
        answer = qa.ask(question, mode=mode, top_k=top_k, filters=filters)
        out.print_json(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        answer = _stream_answer(qa, question, (), mode=mode, top_k=top_k, filters=filters)
    raise typer.Exit(1 if answer.error else 0)


@app.command()
def chat(
    ctx: typer.Context,
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base (default: settings.default_kb)")] = None,
    mode: ModeOption = None,
    top_k: TopKOption = None,
) -> None:
    """An interactive session: follow-up questions are understood in the context of earlier ones."""
    _check_mode(mode)
    qa = _qa(_settings(ctx), kb)
    history: list[tuple[str, str]] = []
    err.print("Ask about your documents; an empty line or Ctrl-D ends the session.")
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not question or question in ("exit", "quit"):
            break
        answer = _stream_answer(qa, question, history, mode=mode, top_k=top_k)
        history += [("user", question), ("assistant", answer.answer)]


def _stream_answer(qa, question: str, history, **kw):  # -> rag.qa.Answer
    from rag.qa import Answer

    answer = None
    for item in qa.stream(question, history, **kw):
        if isinstance(item, Answer):
            answer = item
        else:
            out.file.write(printable(item))
            out.file.flush()
    out.file.write("\n")
    _print_sources(answer)
    return answer


def _snippet(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= width else flat[: width - 1] + "…"
    return printable(flat, one_line=True)


def _print_sources(answer) -> None:  # rag.qa.Answer
    from rag.qa import source_label as _label

    def source_label(item) -> str:
        return printable(_label(item), one_line=True)

    if answer.error:
        err.print(f"[bold red]LLM error:[/] {escape(printable(answer.error))}", highlight=False)
    if answer.standalone_question != answer.question:
        out.print(f"[dim](searched for: {escape(_snippet(answer.standalone_question, 400))})[/]", highlight=False)
    if not answer.found:
        if answer.retrieved:
            out.print("[bold]Closest passages[/] (none answers the question well enough):")
            for i, hit in enumerate(answer.retrieved[:3], start=1):
                out.print(
                    f"  [{i}] {source_label(hit)} (similarity {hit.similarity:.2f}): {_snippet(hit.chunk.text)}",
                    highlight=False,
                    markup=False,
                )
        return
    if answer.citations:
        how = " (matched to the answer by wording; the model cited none)" if answer.citations_attributed else ""
        out.print(f"[bold]Sources[/]{how}")
        for c in answer.citations:
            out.print(f"  [{c.n}] {source_label(c)}: {_snippet(c.text)}", highlight=False, markup=False)
    else:
        out.print("[bold]Passages given to the model[/] (the answer cites none of them):")
        for i, hit in enumerate(answer.context, start=1):
            out.print(f"  [{i}] {source_label(hit)}: {_snippet(hit.chunk.text)}", highlight=False, markup=False)
    if answer.dropped_citations:
        out.print(f"[dim]{answer.dropped_citations} citation(s) pointed at no passage and were dropped[/]")


# ---- kb ------------------------------------------------------------------------------------
def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@kb_app.command("list")
def kb_list(ctx: typer.Context) -> None:
    """Knowledge bases in the store (store.backend: the data directory, or Milvus)."""
    settings = _settings(ctx)
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
                _human(base.size_on_disk()),
                str(meta["generation"]),
            )
    out.print(table)


@kb_app.command("show")
def kb_show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="knowledge base")]) -> None:
    """Documents, chunk counts, model, size on disk, and the files that failed and why."""
    with _open_kb(_settings(ctx), name) as base:
        meta = base.meta()
        docs = base.documents()
        out.print(f"[bold]{name}[/]  {escape(printable(base.location, one_line=True))}", highlight=False)
        if base.read_only:
            out.print("[yellow]read-only[/]: it can be searched, but nothing can be added, changed or removed")
        out.print(
            f"model {meta['embed_model']} (dim {meta['embed_dim']}) | {len(docs)} documents | "
            f"{base.chunk_count()} chunks | {meta['index']} | {_human(base.size_on_disk())} | "
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
                escape(_display(d.path)),
                escape(printable(status, one_line=True)),
                "" if d.pages is None else str(d.pages),
                str(d.chunks),
                "" if d.size is None else _human(d.size),
            )
        out.print(table)
        bad = [d for d in docs if d.status in ("failed", "empty")]
        if bad:
            out.print("[bold red]not ingested[/]")
            for d in bad:
                out.print(
                    f"  {_display(d.path)} ({d.status}): {printable(d.error or '')}", highlight=False, markup=False
                )


def _display(path: str) -> str:
    """A stored document path as the user knows it: relative to here when under here, with
    any control characters shown as escapes."""
    with contextlib.suppress(ValueError):
        path = str(Path(path).relative_to(Path.cwd()))
    return printable(path, one_line=True)


@kb_app.command("rm")
def kb_rm(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="knowledge base")],
    files: Annotated[list[str], typer.Argument(help="documents to remove: path, or file name if unique")],
) -> None:
    """Remove documents (and their vectors) from a knowledge base; nothing is re-embedded."""
    with _open_kb(_settings(ctx), name) as base, base.writer() as writer:  # a base it may not change says so first
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
        raise _fail(f"no document matches {wanted!r}; see `rag kb show` for the paths")
    names = "\n  ".join(printable(d.path, one_line=True) for d in hits)
    raise _fail(f"{wanted!r} matches {len(hits)} documents; give the full path:\n  {names}")


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
    settings = _settings(ctx)
    name = settings.kb_name(name)
    if not store_exists(settings, name):
        raise _fail(f"no knowledge base named {name!r}; see `rag kb list`")
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
        raise _fail(f"--to-store must be local or milvus, not {to_store!r}")
    settings = _settings(ctx)
    with progress_bar(console=err) as bar:
        task = bar.add_task("documents", total=None)
        copied = copy_base(
            settings, source, dest, to_store, progress=lambda done, total: bar.update(task, completed=done, total=total)
        )
    where = to_store or settings.store.backend
    out.print(f"copied {copied} document(s) from {source!r} to {dest!r} in the {where} store", highlight=False)


# ---- config --------------------------------------------------------------------------------
@config_app.command("show")
def config_show(ctx: typer.Context) -> None:
    """Print the effective settings (file + environment + defaults) as TOML."""
    import tomli_w

    settings = _settings(ctx)
    # TOML has no null: unset optional keys are listed as comments so they stay discoverable.
    data = settings.model_dump(mode="json", exclude_none=True)
    if data["llm"]["api_key"] not in ("", "EMPTY"):
        data["llm"]["api_key"] = "***"  # never print a secret
    out.print(tomli_w.dumps(data), end="", highlight=False, markup=False)
    unset = [
        f"{section}.{key}"
        for section, values in settings.model_dump(mode="json").items()
        if isinstance(values, dict)
        for key, value in values.items()
        if value is None
    ]
    for key in unset:
        out.print(f"# {key} is unset", highlight=False, markup=False)


# ---- ui ------------------------------------------------------------------------------------
@app.command()
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

    from ui.launch import is_loopback, streamlit_command, streamlit_env

    if importlib.util.find_spec("streamlit") is None:
        raise _fail("the web UI needs streamlit: pip install streamlit")
    settings = _settings(ctx)
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


# ---- eval (its commands live with the package they drive) ------------------------------------
from eval.cli import eval_app  # noqa: E402 - needs the helpers above

app.add_typer(eval_app, name="eval")

# ---- tune and serve (LoRA: training data, training, vLLM) --------------------------------------
from rag.tune.cli import serve, tune_app  # noqa: E402 - needs the helpers above

app.add_typer(tune_app, name="tune")
app.command()(serve)


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
