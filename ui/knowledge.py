"""The Knowledge bases page: create, list and delete bases; upload documents (ingested with a
progress bar); the document table with the reason for any failure; remove documents."""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from ingest.pipeline import IngestReport, Problem, Progress
from rag.config import KB_NAME_RULE, InvalidKBName, Settings, check_kb_name
from rag.store import DocumentInfo, KBError, create_store, delete_base
from ui import state
from ui.uploads import Stored, remove_documents, save, supported_types

STATUS_LABEL = {"ok": "ready", "empty": "no text", "failed": "failed", "duplicate": "duplicate"}


# ---- logic (no Streamlit calls) ------------------------------------------------------------
def name_problem(name: str, existing: Sequence[str]) -> str | None:
    """Why `name` cannot be a new base's name, or None.  Names become folder names."""
    if not name:
        return "Give the knowledge base a name."
    try:
        check_kb_name(name)
    except InvalidKBName:
        return f"Use {KB_NAME_RULE}."
    if name in existing:
        return f"A knowledge base named '{name}' already exists."
    return None


def create_base(settings: Settings, name: str, embedder: Any) -> None:
    """An empty base recording the embedding model that will fill it."""
    create_store(settings, name, embedder.identity).close()


def document_rows(docs: Sequence[DocumentInfo]) -> list[dict[str, Any]]:
    """The document table as a user reads it: name, state, size of the work, and why it failed."""
    by_id = {d.doc_id: d for d in docs}
    rows = []
    for d in docs:
        status = STATUS_LABEL.get(d.status, d.status)
        if d.status == "duplicate" and d.content_of in by_id:
            status += f" of {Path(by_id[d.content_of].path).name}"
        rows.append(
            {
                "Document": Path(d.path).name,
                "Status": status,
                "Pages": d.pages,
                "Passages": d.chunks,
                "Size": state.human_size(d.size),
                "Added": state.when(d.added_at),
                "Reason": d.error or "",
                "Path": d.path,
            }
        )
    return rows


def base_rows(settings: Settings, names: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        kb = state.open_kb(settings, name)
        if kb is None:
            continue
        docs = kb.documents()
        rows.append(
            {
                "Knowledge base": name,
                "Documents": sum(1 for d in docs if d.status in ("ok", "duplicate")),
                "Failed": sum(1 for d in docs if d.status in ("failed", "empty")),
                "Passages": kb.chunk_count(),
                "Size": state.human_size(kb.size_on_disk()),
                "Updated": state.when(max((d.added_at for d in docs), default=kb.meta().get("created_at")))[:10],
            }
        )
    return rows


class BarProgress(Progress):
    """Draws the ingest pipeline's progress on a Streamlit progress bar.  The pipeline also
    reports from its reader thread, which has no Streamlit context: those calls only record."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.total = 0
        self.done = 0
        self.chunks = 0
        self.current = ""
        self.problems: list[Problem] = []
        self.notices: list[str] = []
        self._owner = threading.get_ident()

    def files_total(self, n: int) -> None:
        self.total = n
        self._draw()

    def file_done(self, path: str) -> None:
        self.done += 1
        self.current = Path(path).name
        self._draw()

    def chunks_done(self, n: int) -> None:
        self.chunks += n
        self._draw()

    def problem(self, problem: Problem) -> None:
        self.problems.append(problem)

    def note(self, text: str) -> None:
        self.current = text
        self._draw()

    def working(self, path: str, stage: str, done: int, total: int) -> None:
        name = Path(path).name
        if stage == "reading":
            self.current = name
        else:
            share = f"{done / total:.0%}" if stage == "chunking" else f"{done:,} of {total:,} passages"
            self.current = f"{name}: {stage} {share}"
        self._draw()

    def announce(self, text: str) -> None:
        self.notices.append(text)

    def _draw(self) -> None:
        if threading.get_ident() != self._owner:
            return
        fraction = self.done / self.total if self.total else 0.0
        text = f"{self.done} of {self.total} file{'s' * (self.total != 1)} read · {self.chunks:,} passages embedded"
        self.bar.progress(min(fraction, 1.0), text=f"{text} · {self.current}" if self.current else text)


@dataclass
class AddOutcome:
    stored: list[Stored] = field(default_factory=list)
    report: IngestReport | None = None
    error: str | None = None


def add_files(settings: Settings, name: str, uploads: Sequence[tuple[str, bytes]], progress: Progress) -> AddOutcome:
    """Store the uploads under the base's folder and ingest them in a worker process with a
    memory cap (ingest.worker_memory_mb): a runaway file fails, the UI stays up for everyone."""
    from ingest.worker import WorkerError, ingest_in_worker

    outcome = AddOutcome([save(settings, name, n, data) for n, data in uploads])
    paths = [s.path for s in outcome.stored if s.path is not None]
    if not paths:
        return outcome
    try:
        outcome.report = ingest_in_worker(settings, name, paths, progress, settings.ingest.worker_memory_mb)
    except (KBError, WorkerError) as exc:
        outcome.error = str(exc)
    return outcome


def outcome_messages(outcome: AddOutcome) -> list[tuple[str, str]]:
    """(kind, text) lines summing up an upload, for the flash area."""
    out: list[tuple[str, str]] = [("error", s.message) for s in outcome.stored if s.status == "rejected"]
    out += [("info", s.message) for s in outcome.stored if s.status == "already there"]
    if outcome.error:
        out.append(("error", outcome.error))
    report = outcome.report
    if report is not None:
        added = report.added + report.updated
        if added:
            out.append(("success", f"Added {added} document{'s' * (added != 1)} ({report.chunks_written:,} passages)."))
        if report.duplicate:
            out.append(("info", f"{report.duplicate} file(s) had the same content as a document already here."))
        out += [("error", f"{Path(p.path).name}: {p.reason}") for p in report.problems]
    return out


# ---- page ----------------------------------------------------------------------------------
def render() -> None:
    settings = state.settings()
    st.title("Knowledge bases")
    st.caption("Each knowledge base is a collection of documents you can ask questions about.")
    state.show_flash()
    names = state.kb_names(settings)
    left, right = st.columns([3, 2], gap="large")
    with left:
        _bases_table(settings, names)
    with right:
        _create_form(settings, names)
    current = state.current_kb(settings, names)
    if current is None:
        return
    st.divider()
    _manage(settings, names, current)


def _bases_table(settings: Settings, names: list[str]) -> None:
    st.subheader("Your knowledge bases")
    rows = base_rows(settings, names)
    if not rows:
        st.info("No knowledge base yet. Create one to start adding documents.", icon=":material/folder_open:")
        return
    st.dataframe(rows, hide_index=True, width="stretch")


def _create_form(settings: Settings, names: list[str]) -> None:
    st.subheader("Create")
    with st.form("create_kb", clear_on_submit=True, border=True):
        name = st.text_input(
            "Name", placeholder="e.g. product-manuals", help="Letters, digits, '-', '_' and '.'", key="new_kb_name"
        )
        submitted = st.form_submit_button("Create knowledge base", type="primary", icon=":material/add:")
    if not submitted:
        return
    name = name.strip()
    problem = name_problem(name, names)
    if problem:
        st.error(problem)
        return
    create_base(settings, name, state.embedder(settings))
    state.set_current_kb(name)
    state.flash("success", f"Knowledge base '{name}' created. Add documents to it below.")
    st.rerun()


def _manage(settings: Settings, names: list[str], name: str) -> None:
    state.kb_picker(names, name, key="kb_picker_manage")
    kb = state.open_kb(settings, name)
    if kb is None:
        st.warning(f"Knowledge base '{name}' no longer exists.")
        return
    state.watch_generation(name)
    docs = kb.documents()
    _upload(settings, name)
    st.subheader("Documents")
    if not docs:
        st.info("No documents yet: add some above.", icon=":material/description:")
    else:
        rows = document_rows(docs)
        st.dataframe(
            rows,
            hide_index=True,
            width="stretch",
            column_order=["Document", "Status", "Pages", "Passages", "Size", "Added", "Reason"],
            column_config={
                "Pages": st.column_config.NumberColumn(format="%d"),
                "Passages": st.column_config.NumberColumn(format="%d"),
                "Reason": st.column_config.TextColumn(width="large"),
            },
        )
        _remove(settings, name, docs)
    _delete(settings, name, len(docs))


def _upload(settings: Settings, name: str) -> None:
    limit = settings.ui.max_upload_mb
    counter = st.session_state.setdefault("_uploader_round", 0)
    files = st.file_uploader(
        f"Add documents to **{name}**",
        type=supported_types(),
        accept_multiple_files=True,
        key=f"uploader_{counter}",
        max_upload_size=max(1, math.ceil(limit)),
        help=f"PDF, Word, Markdown, text, HTML, CSV or Excel; up to {limit:g} MB each.",
    )
    count = len(files or [])
    label = f"Add {count} file{'s' * (count != 1)}" if count else "Add files"
    if not st.button(label, type="primary", disabled=not count, icon=":material/upload:", key="add_files"):
        return
    bar = st.progress(0.0, text="Saving the files…")
    progress = BarProgress(bar)
    outcome = add_files(settings, name, [(f.name, f.getvalue()) for f in files or []], progress)
    for notice in progress.notices:
        state.flash("info", notice)
    bar.progress(1.0, text="Done")
    for kind, text in outcome_messages(outcome):
        state.flash(kind, text)
    if outcome.report is not None:
        state.mark_seen(name, outcome.report.generation)
    st.session_state["_uploader_round"] = counter + 1  # a fresh, empty uploader
    st.rerun()


def _remove(settings: Settings, name: str, docs: list[DocumentInfo]) -> None:
    by_id = {d.doc_id: d for d in docs}
    with st.expander("Remove documents", icon=":material/delete:"):
        chosen = st.multiselect(
            "Documents to remove",
            list(by_id),
            format_func=lambda i: Path(by_id[i].path).name,
            key=f"remove_{name}",
            placeholder="Choose documents",
        )
        confirm = st.checkbox(
            f"Yes, remove {len(chosen)} document{'s' * (len(chosen) != 1)} and their passages",
            key=f"remove_confirm_{name}",
            disabled=not chosen,
        )
        if not st.button("Remove", disabled=not (chosen and confirm), key=f"remove_go_{name}"):
            return
    try:
        generation = remove_documents(settings, name, chosen)
    except KBError as exc:
        st.error(str(exc))
        return
    state.mark_seen(name, generation)
    state.flash("success", f"Removed {len(chosen)} document{'s' * (len(chosen) != 1)}.")
    for key in (f"remove_{name}", f"remove_confirm_{name}"):
        st.session_state.pop(key, None)
    st.rerun()


def _delete(settings: Settings, name: str, n_docs: int) -> None:
    with st.expander("Delete this knowledge base", icon=":material/warning:"):
        st.write(
            f"Deleting **{name}** removes its {n_docs} document{'s' * (n_docs != 1)}, their passages and the files "
            "uploaded here. Files elsewhere on disk are not touched. This cannot be undone."
        )
        typed = st.text_input(f"Type **{name}** to confirm", key=f"delete_confirm_{name}")
        if not st.button("Delete permanently", type="primary", disabled=typed != name, key=f"delete_go_{name}"):
            return
    state.forget_kb(settings, name)
    try:
        delete_base(settings, name)
    except KBError as exc:
        st.error(str(exc))
        return
    state.set_current_kb(None)
    st.session_state.pop(f"delete_confirm_{name}", None)
    state.flash("success", f"Knowledge base '{name}' deleted.")
    st.rerun()
