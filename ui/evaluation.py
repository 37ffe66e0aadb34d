"""The Evaluation page: past evaluation reports (tables, plots, the Markdown report) and a form
that runs a retrieval evaluation on a BEIR folder with a progress bar.

A report is a folder under ``<data_dir>/eval/`` holding ``report.json`` (dataset, split and
one entry per run with its metrics), ``report.md`` and PNG plots, as the `eval` package writes
them.  This page only reads them, so it works for reports made by `rag eval` too.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from rag.config import Settings
from ui import state

METRIC_LABELS = {
    "ndcg@10": "nDCG@10",
    "recall@10": "Recall@10",
    "recall@100": "Recall@100",
    "mrr@10": "MRR@10",
    "map@100": "MAP@100",
}
MODES = ["hybrid", "dense", "bm25"]
_IMAGE_LINE = re.compile(r"^\s*!\[[^\]]*\]\([^)]*\)\s*$", re.MULTILINE)


# ---- reading reports (no Streamlit calls) --------------------------------------------------
def reports_root(settings: Settings) -> Path:
    return settings.data_dir / "eval"


@dataclass
class Report:
    folder: Path
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def created(self) -> float:
        return (self.folder / "report.json").stat().st_mtime

    @property
    def plots(self) -> list[Path]:
        return sorted(self.folder.glob("*.png"))

    @property
    def markdown(self) -> str | None:
        md = self.folder / "report.md"
        return md.read_text(encoding="utf-8") if md.is_file() else None

    def label(self) -> str:
        what = self.data.get("dataset") or self.data.get("kb") or ""
        split = f" ({self.data['split']})" if self.data.get("split") else ""
        return f"{self.name} · {what}{split} · {state.when(self.created)}"


def list_reports(root: Path) -> list[Report]:
    """Report folders under `root`, newest first; a folder whose report.json is unreadable is
    listed with the reason rather than hidden."""
    from eval.report import ReportError, load_report
    from eval.report import list_reports as report_folders

    reports = []
    for folder in report_folders(root):
        try:
            data = load_report(folder)
            reports.append(Report(folder, data if isinstance(data, dict) else {}))
        except (OSError, ReportError) as exc:
            reports.append(Report(folder, error=f"cannot be read: {exc}"))
    return reports


def runs_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per run: its name and what distinguishes it, then each metric, then its time."""
    rows = []
    for run in data.get("runs", []):
        row: dict[str, Any] = {"Run": run.get("name", "")}
        for key in ("mode", "backend", "model", "adapter"):
            if run.get(key):
                row[key.capitalize()] = run[key]
        for metric, value in (run.get("metrics") or {}).items():
            row[METRIC_LABELS.get(metric, metric)] = value
        if "seconds" in run:
            row["Seconds"] = run["seconds"]
        rows.append(row)
    return rows


def published_table(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Published numbers on the same dataset, when the report carries them."""
    return [
        {"System": name, **{METRIC_LABELS.get(k, k): v for k, v in metrics.items()}}
        for name, metrics in (data.get("published") or {}).items()
    ]


def identical_ids_note(data: dict[str, Any]) -> str | None:
    """Whether a query's own document was left out of its ranking (as in BEIR's scores), as the report says it."""
    from eval.report import identical_ids_note as note

    return note(data)


def markdown_without_images(text: str) -> str:
    """The plots are shown as images beside the report; their relative links would not resolve."""
    return _IMAGE_LINE.sub("", text).strip()


def dataset_problem(folder: Path) -> str | None:
    """Why `folder` is not a BEIR dataset folder, or None."""
    if not folder.is_dir():
        return f"{folder} is not a folder."
    missing = [n for n in ("corpus.jsonl", "queries.jsonl") if not (folder / n).is_file()]
    if missing or not splits(folder):
        need = ", ".join([*missing, *([] if splits(folder) else ["qrels/<split>.tsv"])])
        return f"{folder} is not a BEIR folder: missing {need}."
    return None


def splits(folder: Path) -> list[str]:
    qrels = folder / "qrels"
    return sorted(p.stem for p in qrels.glob("*.tsv")) if qrels.is_dir() else []


def run_name_problem(name: str, root: Path) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}", name):
        return "Name the run with letters, digits, '-', '_' or '.'."
    if (root / name).exists():
        return f"A report named '{name}' already exists; choose another name."
    return None


def configs_for(settings: Settings, modes: list[str]) -> list[tuple[str, Settings]]:
    """One configuration per retrieval mode, otherwise the current settings."""
    return [
        (mode, settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"mode": mode})}))
        for mode in modes
    ]


def bar_progress(bar: Any) -> Callable[[str, int, int], None]:
    """The evaluation's (stage, done, total) reports drawn on a progress bar; reports from
    worker threads (no Streamlit context) are skipped."""
    owner = threading.get_ident()

    def report(stage: str, done: int, total: int) -> None:
        if threading.get_ident() == owner:
            bar.progress(min(done / total, 1.0) if total else 0.0, text=f"{stage}: {done:,} of {total:,}")

    return report


# ---- page ----------------------------------------------------------------------------------
def render() -> None:
    settings = state.settings()
    st.title("Evaluation")
    st.caption("How well retrieval finds the right passages, measured on datasets with known answers (BEIR format).")
    root = reports_root(settings)
    state.show_flash()
    past, new = st.tabs(["Reports", "New retrieval evaluation"])
    with past:
        _reports(root)
    with new:
        _new_run(settings, root)


def _reports(root: Path) -> None:
    reports = list_reports(root)
    if not reports:
        st.info(
            f"No evaluation reports yet. Run one in the next tab, or with `rag eval`; reports are kept in {root}.",
            icon=":material/monitoring:",
        )
        return
    names = [r.name for r in reports]
    chosen = st.session_state.get("eval_report")
    index = names.index(chosen) if chosen in names else 0
    report = st.selectbox("Report", reports, index=index, format_func=Report.label)
    if report.error:
        st.error(report.error)
        return
    _show_report(report)


def _show_report(report: Report) -> None:
    data = report.data
    facts = [f"**{k}**: {data[k]}" for k in ("dataset", "split", "queries", "documents", "kb") if data.get(k)]
    if facts:
        st.markdown(" · ".join(facts))
    for warning in data.get("warnings") or []:  # e.g. judged documents missing from the corpus
        st.warning(warning, icon=":material/warning:")
    note = identical_ids_note(data)
    if note:
        st.caption(note)
    rows = runs_table(data)
    if rows:
        metric_columns = [c for c in rows[0] if c in METRIC_LABELS.values()]
        config = {c: st.column_config.NumberColumn(format="%.4f") for c in metric_columns}
        st.dataframe(rows, hide_index=True, width="stretch", column_config=config)
    else:
        st.warning("This report has no runs.")
    published = published_table(data)
    if published:
        with st.expander("Published results on the same dataset, for comparison"):
            st.dataframe(published, hide_index=True, width="stretch")
    plots = report.plots
    if plots:
        columns = st.columns(min(len(plots), 2))
        for i, plot in enumerate(plots):
            with columns[i % len(columns)]:
                st.image(str(plot), caption=plot.stem.replace("_", " "))
    markdown = report.markdown
    if markdown:
        with st.expander("Full report"):
            st.markdown(markdown_without_images(markdown))


def _new_run(settings: Settings, root: Path) -> None:
    st.markdown(
        "Point to a BEIR folder (`corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`). Its corpus is ingested "
        "into a knowledge base of its own, then every query is searched with each retrieval mode."
    )
    folder_text = st.text_input("Dataset folder", placeholder="/data/beir/scifact", key="eval_dataset")
    if not folder_text.strip():
        return
    folder = Path(folder_text.strip()).expanduser()
    problem = dataset_problem(folder)
    if problem:
        st.error(problem)
        return
    available = splits(folder)
    split = st.selectbox("Split", available, index=available.index("test") if "test" in available else 0)
    modes = st.multiselect("Retrieval modes to compare", MODES, default=MODES, key="eval_modes")
    if st.session_state.get("_eval_named_for") != (str(folder), split):  # a new dataset: a new default name
        st.session_state["_eval_named_for"] = (str(folder), split)
        st.session_state["eval_name"] = f"{folder.name}-{split}-{time.strftime('%Y%m%d-%H%M')}"
    name = st.text_input("Report name", key="eval_name").strip()
    name_issue = run_name_problem(name, root)
    if name_issue:
        st.error(name_issue)
    ready = bool(modes) and not name_issue
    if not st.button(
        "Run evaluation", type="primary", disabled=not ready, icon=":material/play_arrow:", key="run_eval"
    ):
        return
    try:
        from eval.retrieval import run_retrieval_eval
    except ImportError as exc:
        st.error(f"The evaluation package is not installed with this copy of rag ({exc}).")
        return
    bar = st.progress(0.0, text="Starting…")
    try:
        out = run_retrieval_eval(settings, folder, split, configs_for(settings, modes), root / name, bar_progress(bar))
    except Exception as exc:  # a malformed dataset line, a model that cannot load: say so, keep the page
        st.error(f"The evaluation failed: {exc}")
        return
    bar.progress(1.0, text="Done")
    st.session_state["eval_report"] = Path(out).name
    state.flash("success", f"Evaluation finished: its report '{Path(out).name}' is shown in the Reports tab.")
    st.rerun()
