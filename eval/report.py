"""Evaluation reports: report.json (the record), report.md (the table a person reads, published
numbers beside ours) and PNG plots (metrics per configuration, recall@k)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from eval.datasets import BeirDataset, plural
from rag.jsonfile import write_json

# Published test-split nDCG@10 / Recall@100, as collected in shared/data/BASELINES.md from the MTEB
# results repository (embeddings-benchmark/results) and Pyserini's BEIR regressions (2cr/beir.yaml).
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "scifact": {
        "BM25 (bm25s, MTEB)": {"ndcg@10": 0.6874, "recall@100": 0.9127},
        "BM25 flat (Pyserini)": {"ndcg@10": 0.6789, "recall@100": 0.9253},
        "all-MiniLM-L6-v2 (MTEB)": {"ndcg@10": 0.6451, "recall@100": 0.9250},
        "e5-small-v2 (MTEB)": {"ndcg@10": 0.6885, "recall@100": 0.9277},
        "bge-small-en-v1.5 (MTEB)": {"ndcg@10": 0.7127, "recall@100": 0.9450},
        "bge-base-en-v1.5 (Pyserini)": {"ndcg@10": 0.7408, "recall@100": 0.9667},
    },
    "nfcorpus": {
        "BM25 (bm25s, MTEB)": {"ndcg@10": 0.3208, "recall@100": 0.2581},
        "BM25 flat (Pyserini)": {"ndcg@10": 0.3218, "recall@100": 0.2457},
        "all-MiniLM-L6-v2 (MTEB)": {"ndcg@10": 0.3159, "recall@100": 0.3115},
        "e5-small-v2 (MTEB)": {"ndcg@10": 0.3245, "recall@100": 0.2981},
        "bge-small-en-v1.5 (MTEB)": {"ndcg@10": 0.3426, "recall@100": 0.3116},
        "bge-base-en-v1.5 (Pyserini)": {"ndcg@10": 0.3735, "recall@100": 0.3368},
    },
}
METRIC_LABELS = {
    "ndcg@10": "nDCG@10",
    "recall@10": "R@10",
    "recall@100": "R@100",
    "mrr@10": "MRR@10",
    "map@100": "MAP@100",
}


class ReportError(ValueError):
    pass


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def write_report(out_dir: Path, dataset: BeirDataset, results: list, keep_identical_ids: bool = False) -> Path:
    """`results`: eval.retrieval.RunResult list, run with `keep_identical_ids` as given.  Returns the folder."""
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    report = {
        "kind": "retrieval",
        "dataset": dataset.name,
        "dataset_path": str(dataset.root),
        "split": dataset.split,
        "queries": len(dataset.queries),
        "documents": len(dataset.corpus),
        "warnings": dataset.warnings(),
        "qrels_missing_documents": dataset.missing.to_json(),
        "identical_ids": "kept" if keep_identical_ids else "dropped",
        "runs": [r.summary() for r in results],
        "published": PUBLISHED.get(dataset.name.lower(), {}),
    }
    for r in results:
        write_json(out_dir / "runs" / f"{slug(r.name)}.json", r.per_query)
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_metrics(report, out_dir / "metrics.png")
    plot_recall_curve(report, out_dir / "recall_at_k.png")
    return out_dir


def write_answer_report(
    out_dir: Path, qa_path: Path, kb: str, split: str | None, runs: list[dict[str, Any]], rows: dict[str, list]
) -> Path:
    """`runs`: {"name", "backend", "model", "adapter", "metrics", "seconds", "questions", "judge"?} each;
    `rows`: run name -> per-question rows, kept for inspection."""
    out_dir = Path(out_dir)
    (out_dir / "runs").mkdir(parents=True, exist_ok=True)
    report = {"kind": "answers", "qa": str(qa_path), "kb": kb, "split": split, "runs": runs}
    for name, per_question in rows.items():
        write_json(out_dir / "runs" / f"{slug(name)}.json", per_question)
    write_json(out_dir / "report.json", report)
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    plot_answers(report, out_dir / "answers.png")
    return out_dir


def load_report(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "report.json"
    if not path.is_file():
        raise ReportError(f"{folder}: no report.json here (a folder written by `rag eval retrieval` or `answers`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def list_reports(root: Path) -> list[Path]:
    """Report folders under `root` (newest first), for `rag eval show` and the UI."""
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob("report.json")]
    return sorted(found, key=lambda p: (p / "report.json").stat().st_mtime, reverse=True)


# ---- Markdown ------------------------------------------------------------------------------
def render_markdown(report: dict[str, Any]) -> str:
    if report.get("kind") == "answers":
        return _answers_markdown(report)
    metrics = list(METRIC_LABELS)
    head = ["configuration", "mode", *(METRIC_LABELS[m] for m in metrics), "query s", "ingest s"]
    lines = [
        f"# Retrieval: {report['dataset']} ({report['split']} split)",
        "",
        f"{report['queries']} judged queries, {report['documents']} documents; scored per document "
        "(a document ranks at its best chunk).",
        "",
        *(f"{line}\n" for line in notes(report)),
        _row(head),
        _row(["---"] * len(head)),
    ]
    for run in report["runs"]:
        values = [f"{run['metrics'][m]:.4f}" for m in metrics]
        lines.append(_row([run["name"], run["mode"], *values, f"{run['seconds']:.1f}", f"{run['ingest_seconds']:.1f}"]))
    published = report.get("published") or {}
    if published:
        lines += [
            "",
            "Published (test split; blank = not published):",
            "",
            _row(head[:-2]),
            _row(["---"] * (len(head) - 2)),
        ]
        for name, values in published.items():
            cells = [f"{values[m]:.4f}" if m in values else "" for m in metrics]
            lines.append(_row([name, "", *cells]))
    lines += ["", "![metrics](metrics.png)", "", "![recall@k](recall_at_k.png)", ""]
    return "\n".join(lines)


def notes(report: dict[str, Any]) -> list[str]:
    """What qualifies the scores: the dataset's warnings, then how identical ids were treated.
    Reports written before these were recorded have neither."""
    lines = [f"Warning: {w}" for w in report.get("warnings") or []]
    identical = identical_ids_note(report)
    return lines + ([identical] if identical else [])


def identical_ids_note(report: dict[str, Any]) -> str | None:
    """One sentence: whether a query's own document was left out of its ranking, and how often it was there."""
    treatment = report.get("identical_ids")
    if treatment not in ("dropped", "kept"):
        return None
    hits = {run["name"]: run.get("identical_id_hits", 0) for run in report.get("runs") or []}
    total = sum(hits.values())
    detail = " (" + ", ".join(f"{name} {n}" for name, n in hits.items()) + ")" if total else ""
    if treatment == "dropped":
        return (
            "A document whose id is the query's own is left out of its ranking, as BEIR does "
            f"(ignore_identical_ids): {plural(total, 'hit')} removed{detail}."
        )
    held = plural(total, "ranking holds", "rankings hold")
    return (
        f"Identical ids kept (--keep-identical-ids), unlike BEIR's scoring: {held} their query's own document{detail}."
    )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _answers_markdown(report: dict[str, Any]) -> str:
    keys = [k for k in ANSWER_METRICS if any(k in r["metrics"] for r in report["runs"])]
    head = ["configuration", "backend", "model", *keys, "questions", "seconds"]
    lines = [
        f"# Answers: {report['qa']} on knowledge base {report['kb']!r}",
        "",
        _row(head),
        _row(["---"] * len(head)),
    ]
    for run in report["runs"]:
        cells = [_fmt(run["metrics"].get(k)) for k in keys]
        lines.append(
            _row([run["name"], run["backend"], run["model"], *cells, str(run["questions"]), f"{run['seconds']:.0f}"])
        )
    base = report["runs"][0] if len(report["runs"]) > 1 else None
    if base:
        lines += ["", f"Difference from {base['name']}:", "", _row(head[:3] + keys), _row(["---"] * (3 + len(keys)))]
        for run in report["runs"][1:]:
            cells = [_delta(run["metrics"].get(k), base["metrics"].get(k)) for k in keys]
            lines.append(_row([run["name"], run["backend"], run["model"], *cells]))
    judges = sorted({run["judge"] for run in report["runs"] if run.get("judge")})
    if judges:
        lines += ["", f"judge_accuracy graded by {', '.join(judges)}; each grade and the judge's reply are in runs/."]
    lines += ["", METRIC_NOTES, "", "![answers](answers.png)", ""]
    return "\n".join(lines)


def _delta(value: Any, base: Any) -> str:
    if not isinstance(value, int | float) or not isinstance(base, int | float):
        return ""
    return f"{value - base:+.3f}"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


ANSWER_METRICS = [
    "exact_match",
    "f1",
    "contains",
    "judge_accuracy",
    "not_found_accuracy",
    "false_not_found",
    "refusal_discrimination",
    "citation_precision",
    "citation_compliance",
    "latency_p50_s",
    "latency_p95_s",
]
METRIC_NOTES = (
    "exact_match / f1: answerable questions (character-level F1 for Chinese); contains: the gold answer appears "
    "in the answer; judge_accuracy (with --judge): answerable questions a judge model graded correct, refusals "
    "counting as wrong; not_found_accuracy: share of "
    'unanswerable questions answered "not found"; false_not_found: share of answerable ones refused; '
    "refusal_discrimination: not_found_accuracy - false_not_found (0: refuses as often when the answer is there); "
    "citation_precision: cited passages from a gold document or holding the answer; citation_compliance: "
    "answers that cite at least one real block themselves."
)


# ---- plots -----------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never opens a window
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(report: dict[str, Any], path: Path) -> None:
    """Left: nDCG@10 of every configuration beside the published numbers (grey), best on top.
    Right: the other metrics, one group per metric, one bar per configuration."""
    import numpy as np

    plt = _pyplot()
    runs = report["runs"]
    ours = [(r["name"], r["metrics"]["ndcg@10"], f"C{i % 10}") for i, r in enumerate(runs)]
    published = [(n, v["ndcg@10"], "0.75") for n, v in (report.get("published") or {}).items() if "ndcg@10" in v]
    rows = sorted(ours + published, key=lambda r: r[1])
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(11, max(3.6, 0.32 * len(rows) + 1.4)), dpi=110, gridspec_kw={"width_ratios": [1, 1.3]}
    )
    bars = left.barh([r[0] for r in rows], [r[1] for r in rows], color=[r[2] for r in rows])
    left.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    left.set_xlim(0, min(1.0, max(r[1] for r in rows) * 1.18))
    left.set_title("nDCG@10 (grey: published)", fontsize=10)
    left.tick_params(axis="y", labelsize=8)
    others = [m for m in METRIC_LABELS if m != "ndcg@10"]
    width = 0.8 / max(1, len(runs))
    x = np.arange(len(others))
    for i, run in enumerate(runs):
        offset = (i - (len(runs) - 1) / 2) * width
        right.bar(x + offset, [run["metrics"][m] for m in others], width, label=run["name"], color=f"C{i % 10}")
    right.set_xticks(x, [METRIC_LABELS[m] for m in others])
    right.set_ylim(0, 1.0)
    right.grid(axis="y", alpha=0.3)
    right.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.32), ncols=min(4, len(runs)), frameon=False)
    fig.suptitle(f"{report['dataset']} ({report['split']} split, {report['queries']} queries)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_recall_curve(report: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for run in report["runs"]:
        curve = {int(k): v for k, v in run.get("recall_curve", {}).items()}
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", markersize=3, label=run["name"])
    ax.set_xscale("log")
    ax.set_xlabel("k (documents)")
    ax.set_ylabel("recall@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"recall@k: {report['dataset']} ({report['split']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_answers(report: dict[str, Any], path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    keys = [k for k in ANSWER_METRICS if not k.startswith("latency") and any(k in r["metrics"] for r in report["runs"])]
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=110)
    width = 0.8 / max(1, len(report["runs"]))
    x = np.arange(len(keys))
    lowest = 0.0
    for i, run in enumerate(report["runs"]):
        values = [run["metrics"].get(k) or 0.0 for k in keys]
        lowest = min(lowest, *values)
        bars = ax.bar(x + (i - (len(report["runs"]) - 1) / 2) * width, values, width, label=run["name"])
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(x, [k.replace("_", "\n") for k in keys], fontsize=8)
    ax.set_ylim(lowest - 0.1 if lowest < 0 else 0, 1.1)  # refusal_discrimination can be negative
    ax.axhline(0, color="0.3", linewidth=0.6)
    ax.set_title(f"answers: {report['qa']}")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
