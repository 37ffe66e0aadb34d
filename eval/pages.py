"""Page-level retrieval on PDF QA sets (FinanceBench): is an evidence page among the top-k chunks?

A question names its filing (`doc_name`, the PDF's file name without `.pdf`) and the pages that
hold its answer (`evidence: [{doc_name, page}]`, 1-based).  The PDFs are ingested by the normal
pipeline into one knowledge base, and every question goes through the Retriever `rag ask` uses,
twice: against its own filing only (a path filter, as `rag ask --only FILE` does) and against the
whole store.  A retrieved chunk is a hit when its file and page are an evidence page.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval.datasets import DatasetError, _field, plural, read_jsonl
from eval.retrieval import ProgressFn, _IngestProgress, _settings_summary
from ingest.pipeline import IngestPipeline, IngestReport, open_for_ingest
from rag.config import Settings
from rag.embed import Embedder
from rag.jsonfile import write_json
from rag.retrieve import Filters, Retriever
from rag.stack import embedder_for, retriever_for
from rag.store import Store

SCOPES = ("own", "all")  # against the question's own filing only; against the whole store
SCOPE_LABELS = {"own": "own filing", "all": "whole store"}
QUERY_BATCH = 64


@dataclass
class PageQuestion:
    id: str
    question: str
    doc_name: str  # the filing: its PDF's file name without the extension
    evidence: list[tuple[str, int]]  # (doc_name, 1-based page)
    question_type: str = ""


@dataclass
class PagesResult:
    name: str
    mode: str
    k: int
    settings: dict[str, Any]
    metrics: dict[str, float]
    by_type: dict[str, dict[str, float]]
    seconds: float
    kb: str
    ingest_seconds: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "k": self.k,
            "settings": self.settings,
            "metrics": self.metrics,
            "by_type": self.by_type,
            "seconds": round(self.seconds, 2),
            "kb": self.kb,
            "ingest_seconds": round(self.ingest_seconds, 2),
        }


# ---- the questions -------------------------------------------------------------------------
def load_page_questions(path: Path) -> list[PageQuestion]:
    """FinanceBench-style JSONL: `doc_name`, `question`, `evidence: [{doc_name, page}]`; the id is
    `financebench_id` or `id` when there is one, else the line number."""
    path = Path(path)
    items: list[PageQuestion] = []
    seen: set[str] = set()
    for lineno, obj in read_jsonl(path):
        qid = str(obj.get("financebench_id") or obj.get("id") or f"line{lineno}")
        question = _field(path, lineno, obj, "question")
        doc_name = _field(path, lineno, obj, "doc_name")
        evidence = []
        for n, ev in enumerate(_field(path, lineno, obj, "evidence", list), start=1):
            page = ev.get("page") if isinstance(ev, dict) else None
            if not isinstance(page, int) or isinstance(page, bool) or page < 1:
                raise DatasetError(f"{path}:{lineno}: evidence {n} needs a 1-based integer 'page'")
            evidence.append((str(ev.get("doc_name") or doc_name), page))
        if not evidence:
            raise DatasetError(f"{path}:{lineno}: no evidence pages to score against")
        if qid in seen:
            raise DatasetError(f"{path}:{lineno}: duplicate id {qid!r}")
        seen.add(qid)
        kind = str(obj.get("question_type") or "")
        items.append(PageQuestion(qid, question, doc_name, list(dict.fromkeys(evidence)), kind))
    if not items:
        raise DatasetError(f"{path}: no questions")
    return items


def doc_name_of(path: str) -> str:
    """The doc_name a stored file stands for: its file name without the extension."""
    return Path(path.rsplit("/", 1)[-1]).stem


# ---- the PDFs as a knowledge base ----------------------------------------------------------
def pages_kb_name(docs_dir: Path, settings: Settings) -> str:
    """Named by the folder and by every setting that changes the stored chunks or vectors
    (embedder, chunker, how pages are read), so variants never share a base; retrieval settings
    do not enter, so modes and fusions share one ingest."""
    from ingest.chunking import chunker_fingerprint

    e = settings.embed
    read = settings.ingest.model_dump(include={"ocr", "ocr_dpi", "ocr_min_text_chars"})
    parts = [
        str(Path(docs_dir).resolve()),
        e.model,
        e.normalize,
        e.passage_prefix,
        chunker_fingerprint(settings.chunk),
        settings.chunk.model_dump(mode="json"),
        read,
    ]
    if settings.ingest.dense_index == "hnsw":
        parts.append("hnsw")
    if settings.ingest.ocr_upside_down_lines:  # only when set, so bases named before it keep their name
        parts.append("ocr-upside-down-lines")
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:8]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(docs_dir).resolve().name)[:40].strip("-.") or "docs"
    return f"pages-{label}-{digest}"


def pages_kb(
    settings: Settings, docs_dir: Path, embedder: Embedder, name: str, progress: ProgressFn | None = None
) -> tuple[Store, IngestReport]:
    """The folder ingested into base `name` (incremental: a second run finds every file unchanged)."""
    kb = open_for_ingest(settings, name, embedder)
    report = IngestPipeline(settings, embedder, kb).run(
        [Path(docs_dir)], sync=True, progress=_FileProgress(f"ingest {name}", progress)
    )
    if report.interrupted:
        kb.close()
        raise KeyboardInterrupt
    return kb, report


class _FileProgress(_IngestProgress):
    """Every file counts: a folder of 49 filings is 49 steps, each a minute."""

    def file_done(self, path: str) -> None:
        self.done += 1
        if self.report:
            self.report(self.stage, self.done, self.total)


# ---- scoring -------------------------------------------------------------------------------
def first_hit(retrieved: list[tuple[str, int | None]], evidence: set[tuple[str, int]]) -> int | None:
    """1-based rank of the first retrieved (doc_name, page) that is an evidence page, or None."""
    for rank, page in enumerate(retrieved, start=1):
        if page in evidence:
            return rank
    return None


def summarize(rows: list[dict[str, Any]], k: int) -> dict[str, float]:
    """hit@1, hit@k and MRR@k of the first evidence page, in each scope."""
    metrics: dict[str, float] = {}
    n = max(1, len(rows))
    for scope in SCOPES:
        ranks = [row[scope]["rank"] for row in rows]
        metrics[f"{scope}_hit@1"] = round(sum(r == 1 for r in ranks) / n, 4)
        metrics[f"{scope}_hit@{k}"] = round(sum(r is not None and r <= k for r in ranks) / n, 4)
        metrics[f"{scope}_mrr@{k}"] = round(sum(1 / r for r in ranks if r is not None and r <= k) / n, 4)
    return metrics


def search_questions(
    retriever: Retriever,
    questions: list[PageQuestion],
    files: dict[str, str],
    k: int,
    mode: str,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per question: its evidence pages and, in each scope, the retrieved (doc_name, page,
    score) list and the rank of the first evidence page.  `files`: doc_name -> stored path; a
    question whose filing is not in the base finds nothing in its own-filing scope."""
    rows = []
    for start in range(0, len(questions), QUERY_BATCH):
        batch = questions[start : start + QUERY_BATCH]
        vectors = retriever.encode_queries([q.question for q in batch])
        for q, qvec in zip(batch, vectors, strict=True):
            evidence = set(q.evidence)
            row: dict[str, Any] = {
                "id": q.id,
                "question": q.question,
                "question_type": q.question_type,
                "doc_name": q.doc_name,
                "evidence": [[d, p] for d, p in q.evidence],
            }
            for scope in SCOPES:
                if scope == "own":
                    path = files.get(q.doc_name)
                    # the file's name, glob-escaped: a name with [ or * matches only itself
                    filters = Filters(path_glob=glob.escape(path.rsplit("/", 1)[-1])) if path else None
                    if filters is None:
                        row[scope] = {"rank": None, "retrieved": []}
                        continue
                else:
                    filters = None
                hits = retriever.search(q.question, top_k=k, mode=mode, filters=filters, query_vector=qvec).hits
                retrieved = [(doc_name_of(h.chunk.source), h.chunk.page_no) for h in hits]
                row[scope] = {
                    "rank": first_hit(retrieved, evidence),
                    "retrieved": [[d, p, round(h.score, 4)] for (d, p), h in zip(retrieved, hits, strict=True)],
                }
            rows.append(row)
        if progress:
            progress(min(start + QUERY_BATCH, len(questions)))
    return rows


def evaluate_pages(
    name: str,
    settings: Settings,
    questions: list[PageQuestion],
    docs_dir: Path,
    k: int,
    embedders: dict[str, Embedder],
    kb_name: str | None = None,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> PagesResult:
    """One configuration (its retrieve.mode included) over every question, in both scopes."""
    embedder = embedder_for(settings, embedders)
    kb_name = kb_name or pages_kb_name(docs_dir, settings)
    t0 = time.perf_counter()
    kb, report = pages_kb(settings, docs_dir, embedder, kb_name, progress)
    ingest_seconds = time.perf_counter() - t0
    with kb:
        files = {doc_name_of(d.path): d.path for d in kb.documents(status="ok")}
        for problem in report.problems if warn else []:
            warn(f"{problem.path}: {problem.status}: {problem.reason}")
        missing = sorted({q.doc_name for q in questions} - set(files))
        if missing and warn:
            asked = sum(q.doc_name in missing for q in questions)
            warn(
                f"{plural(len(missing), 'filing')} asked about {plural(asked, 'time')} not in the base "
                f"(e.g. {missing[0]!r}): those questions score as misses"
            )
        retriever = retriever_for(settings, kb, embedder=embedder)
        mode = settings.retrieve.mode
        stage = f"queries {name}"
        if progress:
            progress(stage, 0, len(questions))
        tick = (lambda done: progress(stage, done, len(questions))) if progress else None
        t1 = time.perf_counter()
        rows = search_questions(retriever, questions, files, k, mode, tick)
        seconds = time.perf_counter() - t1
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_kind[row["question_type"] or "(none)"].append(row)
    by_type = {
        kind: {"questions": len(kind_rows), **summarize(kind_rows, k)} for kind, kind_rows in sorted(by_kind.items())
    }
    summary = _settings_summary(settings)
    summary["ingest"] = settings.ingest.model_dump(include={"ocr", "ocr_dpi", "ocr_min_text_chars"})
    return PagesResult(name, mode, k, summary, summarize(rows, k), by_type, seconds, kb_name, ingest_seconds, rows)


def run_pages_eval(
    settings: Settings,
    questions_path: Path,
    docs_dir: Path,
    configs: list[tuple[str, Settings]],
    out_dir: Path,
    k: int = 5,
    kb_name: str | None = None,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> Path:
    """Evaluate each named configuration and write the report folder (report.json, report.md,
    runs/<name>.json with every question's retrieved pages).  Bases live in `settings`' data_dir.
    `kb_name` names the one base every configuration uses; they must then chunk alike."""
    questions = load_page_questions(questions_path)
    if not Path(docs_dir).is_dir():
        raise DatasetError(f"{docs_dir}: not a folder (--docs is the folder holding the PDFs)")
    configs = [
        (n, c.model_copy(update={"data_dir": settings.data_dir, "cache_dir": settings.cache_dir})) for n, c in configs
    ]
    if kb_name and len({pages_kb_name(docs_dir, c) for _, c in configs}) > 1:
        raise ValueError("--kb names one base, but the configurations chunk or embed differently; leave --kb out")
    embedders: dict[str, Embedder] = {}
    results = [
        evaluate_pages(name, cfg, questions, docs_dir, k, embedders, kb_name, progress, warn) for name, cfg in configs
    ]
    return write_pages_report(out_dir, questions_path, docs_dir, questions, results)


# ---- the report ----------------------------------------------------------------------------
def write_pages_report(
    out_dir: Path, questions_path: Path, docs_dir: Path, questions: list[PageQuestion], results: list[PagesResult]
) -> Path:
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    report = {
        "kind": "pages",
        "dataset": Path(questions_path).resolve().parent.name,
        "questions_path": str(questions_path),
        "docs": str(docs_dir),
        "questions": len(questions),
        "question_types": dict(Counter(q.question_type or "(none)" for q in questions)),
        "runs": [r.summary() for r in results],
    }
    for r in results:
        write_json(out_dir / "runs" / f"{_slug(r.name)}.json", r.rows)
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_pages_markdown(report), encoding="utf-8")
    return out_dir


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_pages_markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    k = runs[0]["k"] if runs else 5
    keys = [f"{s}_{m}" for s in SCOPES for m in ("hit@1", f"hit@{k}", f"mrr@{k}")]
    head = ["configuration", "mode", *(f"{SCOPE_LABELS[key.split('_')[0]]} {key.split('_')[1]}" for key in keys)]
    lines = [
        f"# Page retrieval: {report['dataset']}",
        "",
        f"{report['questions']} questions over the PDFs in {report['docs']}. A hit: a top-{k} chunk lies on an "
        "evidence page (same file, same page); own filing = searched within the question's filing only, "
        "whole store = among every filing. MRR of the first evidence page in the top k.",
        "",
        _row([*head, "query s", "ingest s"]),
        _row(["---"] * (len(head) + 2)),
    ]
    for run in runs:
        cells = [f"{run['metrics'][key]:.3f}" for key in keys]
        lines.append(_row([run["name"], run["mode"], *cells, f"{run['seconds']:.1f}", f"{run['ingest_seconds']:.1f}"]))
    for run in runs:
        lines += ["", f"By question type ({run['name']}):", ""]
        lines += [_row(["type", "questions", f"own hit@{k}", f"whole hit@{k}"]), _row(["---"] * 4)]
        for kind, m in run["by_type"].items():
            lines.append(_row([kind, str(m["questions"]), f"{m[f'own_hit@{k}']:.3f}", f"{m[f'all_hit@{k}']:.3f}"]))
    lines += ["", "Every question's evidence pages and retrieved (file, page) lists: `runs/<configuration>.json`.", ""]
    return "\n".join(lines)
