"""`rag eval ...`: retrieval on BEIR folders, answers on QA sets, reports, drafting QA sets."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress

from cli.common import answering, err, fail, note, open_kb, out, settings_of
from cli.display import progress_bar
from rag.config import ConfigError, Settings, load_settings

eval_app = typer.Typer(
    help="Measure retrieval (BEIR folders) and answers (QA sets); compare configurations in one report.",
    no_args_is_help=True,
)
MODES = ("dense", "bm25", "hybrid")


class _StageBars:
    """One bar per stage ("ingest …", "queries …"), driven by the eval functions' callbacks."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total)


def _default_out(settings: Settings, kind: str, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return settings.data_dir / "eval" / f"{stamp}-{kind}-{name}"


def _configs(settings: Settings, paths: list[Path], modes: list[str]) -> list[tuple[str, Settings]]:
    """Every (config file x mode) pair, named "file/mode" (just the mode when no file is given)."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise fail(f"--mode must be one of {', '.join(MODES)}, not {bad[0]!r}")
    try:
        bases = [(p.stem, load_settings(p)) for p in paths] or [("default", settings)]
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    configs = []
    for stem, cfg in bases:
        for mode in modes or [cfg.retrieve.mode]:
            name = f"{stem}/{mode}" if paths else mode
            configs.append((name, cfg.model_copy(update={"retrieve": cfg.retrieve.model_copy(update={"mode": mode})})))
    return configs


@eval_app.command("retrieval")
def retrieval(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Option("--dataset", help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/")],
    split: Annotated[str, typer.Option("--split", help="qrels/<split>.tsv to score against")] = "test",
    mode: Annotated[
        list[str] | None,
        typer.Option("--mode", help="dense | bm25 | hybrid; repeat to compare (default: retrieve.mode)"),
    ] = None,
    config: Annotated[
        list[Path] | None, typer.Option("--config", help="a settings file to compare; repeat for several")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="report folder (default: <data_dir>/eval/<time>-…)")
    ] = None,
    keep_identical_ids: Annotated[
        bool,
        typer.Option(
            "--keep-identical-ids",
            help="keep a retrieved document whose id is the query's own (BEIR drops it, as this does by default: "
            "where queries are also corpus documents, each would find itself at rank 1)",
        ),
    ] = False,
) -> None:
    """Ingest a BEIR corpus (cached), run its queries, score per document with ranx, write a report.

    Each --config x --mode pair is one row of the report. Knowledge bases are named by corpus,
    embedder and chunker, so configurations that differ only in retrieval share one ingest, and a
    second run reuses it. Scored as BEIR scores: judged documents missing from the corpus count as
    misses (with a warning), and a query's own document is left out of its ranking.
    """
    from eval.datasets import DatasetError
    from eval.retrieval import run_retrieval_eval

    settings = settings_of(ctx)
    configs = _configs(settings, config or [], mode or [])
    target = out_dir or _default_out(settings, "retrieval", dataset.name)
    try:
        with progress_bar() as bar:
            folder = run_retrieval_eval(
                settings, dataset, split, configs, target, _StageBars(bar), keep_identical_ids, _warn
            )
    except (DatasetError, ValueError) as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt as exc:
        raise fail(
            "interrupted; ingested documents are kept, so the next run continues where this one stopped", 1
        ) from exc
    _show(folder)


@eval_app.command("pages")
def pages(
    ctx: typer.Context,
    questions: Annotated[
        Path, typer.Argument(help="JSONL with doc_name, question, evidence: [{doc_name, page}] (FinanceBench)")
    ],
    docs: Annotated[Path, typer.Option("--docs", help="the folder of PDFs the questions are about")],
    kb: Annotated[
        str | None, typer.Option("--kb", help="knowledge base to ingest into (default: named by folder and settings)")
    ] = None,
    k: Annotated[int, typer.Option("--k", min=1, help="chunks retrieved per question")] = 5,
    mode: Annotated[
        list[str] | None,
        typer.Option("--mode", help="dense | bm25 | hybrid; repeat to compare (default: retrieve.mode)"),
    ] = None,
    config: Annotated[
        list[Path] | None, typer.Option("--config", help="a settings file to compare; repeat for several")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="report folder (default: <data_dir>/eval/<time>-…)")
    ] = None,
) -> None:
    """Page-level retrieval: is an evidence page among the top-k chunks, within the question's own
    filing and across all of them?

    The PDFs are ingested into one knowledge base (incremental, reused by the next run; named by
    the folder and the settings that change chunks or vectors, unless --kb is given), then every
    question is searched with the retriever `rag ask` uses. Each --config x --mode pair is one row;
    every question's retrieved (file, page) list is kept in the report's runs/ folder.
    """
    from eval.datasets import DatasetError
    from eval.pages import run_pages_eval

    settings = settings_of(ctx)
    configs = _configs(settings, config or [], mode or [])
    name = settings.kb_name(kb) if kb is not None else None
    target = out_dir or _default_out(settings, "pages", questions.parent.name or questions.stem)
    try:
        with progress_bar() as bar:
            folder = run_pages_eval(settings, questions, docs, configs, target, k, name, _StageBars(bar), _warn)
    except (DatasetError, ValueError) as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt as exc:
        raise fail(
            "interrupted; ingested documents are kept, so the next run continues where this one stopped", 1
        ) from exc
    _show(folder)


def _warn(message: str) -> None:
    """One line on stderr, never wrapped, so it can be read (and grepped) whole."""
    from rich.markup import escape

    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


@eval_app.command("show")
def show(
    ctx: typer.Context,
    folder: Annotated[Path | None, typer.Argument(help="a report folder (default: list the reports)")] = None,
) -> None:
    """Print a report's table (or, without a folder, list the reports in <data_dir>/eval)."""
    from eval.report import list_reports

    if folder is not None:
        _show(folder)
        return
    root = settings_of(ctx).data_dir / "eval"
    reports = list_reports(root)
    if not reports:
        out.print(f"no reports in {root}; make one with `rag eval retrieval --dataset PATH`")
        return
    for path in reports:
        out.print(str(path), highlight=False)


def _show(folder: Path) -> None:
    from eval.report import ReportError, load_report, render_markdown

    try:
        report = load_report(folder)
    except ReportError as exc:
        raise fail(str(exc)) from exc
    if report.get("kind") == "answers":
        out.print(_answers_table(report))
    elif report.get("kind") == "pages":
        from rich.markdown import Markdown

        from eval.pages import render_pages_markdown

        out.print(Markdown(render_pages_markdown(report)))
    else:
        from rich.markdown import Markdown

        text = render_markdown(report)
        out.print(Markdown("\n".join(line for line in text.splitlines() if not line.startswith("!["))))
    plots = ", ".join(p.name for p in sorted(folder.glob("*.png")))
    out.print(f"report: {folder}/report.md" + (f" (plots: {plots})" if plots else ""), highlight=False)


def _answers_table(report: dict):
    """Metrics down, runs across: a dozen metrics do not fit across a terminal."""
    from rich.table import Table

    from eval.report import ANSWER_METRICS

    runs = report["runs"]
    table = Table(title=f"answers: {report['qa']} (kb {report['kb']!r})")
    table.add_column("metric")
    for run in runs:
        table.add_column(run["name"], justify="right")
    for key in [*ANSWER_METRICS, "answerable", "unanswerable", "errors", "judge_unclear"]:
        values = [run["metrics"].get(key) for run in runs]
        if all(v is None for v in values):
            continue
        table.add_row(key, *("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values))
    table.add_row("seconds", *(f"{run['seconds']:.0f}" for run in runs))
    return table


@eval_app.command("answers")
def answers(
    ctx: typer.Context,
    qa_file: Annotated[
        Path, typer.Option("--qa", help='QA JSONL: {"id", "question", "answers", "gold_doc_ids"?, "answerable"?}')
    ],
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base holding the documents")] = None,
    split: Annotated[str | None, typer.Option("--split", help='only items whose "split" field is this')] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="local | openai (default: llm.backend)")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="model (openai: served name or LoRA adapter); repeat to compare")
    ] = None,
    adapter: Annotated[
        list[Path] | None, typer.Option("--adapter", help="local backend: a peft adapter folder; repeat to compare")
    ] = None,
    base: Annotated[
        bool,
        typer.Option(
            "--base/--no-base",
            help="with --adapter: also run the model without it (--no-base saves that run when comparing adapters)",
        ),
    ] = True,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="a seeded sample of this many questions")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    max_new_tokens: Annotated[int | None, typer.Option("--max-new-tokens", min=1)] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="report folder")] = None,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            help="a model that grades each answer against the gold answers (judge_accuracy): its served name "
            "with --judge-base-url, else a model for --backend",
        ),
    ] = None,
    judge_base_url: Annotated[
        str | None, typer.Option("--judge-base-url", help="the OpenAI-compatible server of the --judge model")
    ] = None,
    gate_only: Annotated[
        bool,
        typer.Option(
            "--gate-only",
            help='only the "not found" decision retrieval makes before any model runs (the refusal metrics, '
            "in seconds); no answer is generated or scored",
        ),
    ] = False,
) -> None:
    """Score answers on a QA set, one row per model and adapter, with the differences.

    Every question goes through the full pipeline (retrieval, prompt, model): exact match, F1,
    "not found" accuracy, citation compliance and precision, latency; with --judge, the share of
    answers a judge model grades correct (use a capable one: the 135M default says "no" to all)."""
    from eval.answers import AnswerEvalError, run_answers, summarize
    from eval.datasets import DatasetError, load_qa, sample
    from eval.report import write_answer_report

    settings = settings_of(ctx)
    if gate_only and judge:
        raise fail("--gate-only writes no answers for --judge to grade")
    try:
        items = sample(load_qa(qa_file, split), limit, seed)
    except DatasetError as exc:
        raise fail(str(exc)) from exc
    chosen = variants(settings, backend, model or [], adapter or [], max_new_tokens, base)
    judge_settings = _judge_settings(settings, backend, judge, judge_base_url) if judge else None
    grade = _load_judge(judge_settings) if judge_settings else None  # fails now, not after an hour of answers
    name = settings.kb_name(kb)
    runs, rows = [], {}
    for label, cfg in chosen:
        qa = answering(cfg, name)
        started = time.perf_counter()
        with progress_bar() as bar:
            task = bar.add_task(f"{label}: questions", total=len(items))
            try:
                per_question = run_answers(
                    qa, items, lambda done, total, t=task: bar.update(t, completed=done), generate=not gate_only
                )
            except AnswerEvalError as exc:
                raise fail(f"{label}: {exc}", 1) from exc
        runs.append(
            {
                "name": label,
                "backend": cfg.llm.backend,
                "model": cfg.llm.model,
                "adapter": cfg.llm.adapter,
                "seconds": round(time.perf_counter() - started, 1),
                "questions": len(items),
            }
        )
        rows[label] = per_question
    judge_failed = grade(rows) if grade is not None else None
    for run in runs:
        run["metrics"] = summarize(rows[run["name"]])
        if judge_settings is not None and not judge_failed:
            run["judge"] = judge_settings.llm.model
    target = out_dir or _default_out(settings, "answers", qa_file.stem)
    _show(write_answer_report(target, qa_file, name, split, runs, rows))
    if judge_failed:
        raise fail(f"--judge: {judge_failed}; the report above has no judge_accuracy", 1)


def variants(
    settings: Settings,
    backend: str | None,
    models: list[str],
    adapters: list[Path],
    max_new_tokens: int | None,
    base: bool = True,
) -> list[tuple[str, Settings]]:
    """One Settings per run: each --model (unless --no-base), then the first model with each --adapter."""
    if backend not in (None, "local", "openai"):
        raise fail(f"--backend must be local or openai, not {backend!r}")
    if not base and not adapters:
        raise fail("--no-base leaves nothing to run without --adapter")
    llm = settings.llm.model_copy(
        update={k: v for k, v in {"backend": backend, "max_new_tokens": max_new_tokens}.items() if v}
    )
    if adapters and llm.backend != "local":
        raise fail(
            "--adapter loads a peft folder in-process: use it with --backend local (with openai, pass the "
            "adapter's served name as --model)"
        )
    out_: list[tuple[str, Settings]] = []
    for m in (models or [llm.model]) if base else []:
        out_.append((m.rsplit("/", 1)[-1], settings.model_copy(update={"llm": llm.model_copy(update={"model": m})})))
    first = models[0] if models else llm.model
    for a in adapters:
        if not (a / "adapter_config.json").is_file():
            raise fail(f"{a}: not a peft adapter folder (no adapter_config.json)")
        cfg_llm = llm.model_copy(update={"model": first, "adapter": str(a)})
        out_.append((f"{first.rsplit('/', 1)[-1]}+{a.name}", settings.model_copy(update={"llm": cfg_llm})))
    return out_


def _judge_settings(settings: Settings, backend: str | None, judge: str, base_url: str | None) -> Settings:
    """The judge runs on its own server when given one, else on the backend the answers used."""
    update: dict[str, Any] = {"model": judge, "backend": "openai" if base_url else backend or settings.llm.backend}
    if base_url:
        update["base_url"] = base_url
    return settings.model_copy(update={"llm": settings.llm.model_copy(update=update)})


def _load_judge(settings: Settings) -> Callable[[dict[str, list[dict[str, Any]]]], str | None]:
    """The judge model, loaded and asked once (so a wrong name or a server that is down is said at
    the start), then a function grading every run's answers with it."""
    from eval.judge import JudgeError, judge_rows, make_judge
    from rag.llm import LLMError
    from rag.models import ModelNotAvailable

    try:
        invoke = make_judge(settings)
        invoke([("user", "Reply with one word: yes.")])
    except (JudgeError, LLMError, ModelNotAvailable) as exc:
        raise fail(f"--judge: {exc}", 1) from exc

    def grade(rows: dict[str, list[dict[str, Any]]]) -> str | None:
        """None, or why grading stopped; then no row keeps a grade and the report is written without."""
        try:
            for label, per_question in rows.items():
                with progress_bar() as bar:
                    task = bar.add_task(f"{label}: judge", total=len(per_question))
                    judge_rows(invoke, per_question, lambda done, total, t=task: bar.update(t, completed=done))
        except JudgeError as exc:
            for row in (r for per_question in rows.values() for r in per_question):
                row.pop("judge", None)
                row.pop("judge_reply", None)
            return str(exc)
        return None

    return grade


@eval_app.command("corpus")
def corpus(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="a folder with corpus.jsonl (BEIR format), or the file itself")],
    kb: Annotated[str, typer.Option("--kb", help="knowledge base to create or update")],
) -> None:
    """Ingest a corpus.jsonl into a knowledge base, e.g. for `rag eval answers` on SQuAD.

    One document per line, named by its id."""
    from cli.ingest_display import RichProgress, print_report
    from eval.datasets import DatasetError, load_corpus, write_corpus
    from ingest.pipeline import IngestPipeline, open_for_ingest
    from rag.embed import Embedder

    settings = settings_of(ctx)
    path = dataset / "corpus.jsonl" if dataset.is_dir() else dataset
    try:
        docs = load_corpus(path)
    except DatasetError as exc:
        raise fail(str(exc)) from exc
    folder = write_corpus(docs, settings.cache_dir / "eval" / "corpora" / f"kb-{kb}")
    embedder = Embedder(settings.embed)
    with open_for_ingest(settings, kb, embedder) as base, RichProgress(err) as progress:
        report = IngestPipeline(settings, embedder, base).run([folder], sync=True, progress=progress)
    print_report(kb, report)
    raise typer.Exit(report.exit_code)


@eval_app.command("convert-qa")
def convert_qa(
    dataset: Annotated[Path, typer.Argument(help='a BEIR folder with answers.jsonl ({"_id", "answers"} per query)')],
    out_file: Annotated[Path, typer.Option("--out", help="QA JSONL to write")],
    split: Annotated[str, typer.Option("--split")] = "test",
) -> None:
    """Turn a BEIR folder with answers (CMRC2018 as shipped in shared/data) into a QA file."""
    from eval.datasets import DatasetError, beir_to_qa, write_qa

    try:
        items = beir_to_qa(dataset, split)
    except DatasetError as exc:
        raise fail(str(exc)) from exc
    write_qa(items, out_file)
    out.print(f"{len(items)} questions -> {out_file}", highlight=False)


@eval_app.command("make-qa")
def make_qa(
    ctx: typer.Context,
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base to draft questions from")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="questions wanted")] = 50,
    out_file: Annotated[Path, typer.Option("--out", help="QA JSONL to write")] = Path("qa.jsonl"),
    backend: Annotated[str | None, typer.Option("--backend", help="local | openai (default: llm.backend)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="the teacher model (openai: its served name)")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Draft a QA set from your own documents with an LLM; review it before use.

    Any OpenAI-compatible endpoint works; a capable teacher model gives far better questions than
    the small default. Answers are copied from the passages, so the set can be scored without a
    judge."""
    from eval.datasets import write_qa
    from eval.make_qa import draft_qa
    from rag.llm import make_chat_model
    from rag.qa import describe_llm_error

    settings = settings_of(ctx)
    updates = {k: v for k, v in {"backend": backend, "model": model}.items() if v}
    settings = settings.model_copy(update={"llm": settings.llm.model_copy(update=updates)})
    base = open_kb(settings, kb)
    try:
        chat = make_chat_model(settings, notify=note)
        with progress_bar() as bar:
            task = bar.add_task("drafting", total=n)
            items, tried = draft_qa(base, chat, n, seed, lambda t, kept, want: bar.update(task, completed=kept))
    except Exception as exc:
        raise fail(describe_llm_error(exc, settings), 1) from exc
    if not items:
        raise fail(f"the model produced no usable question from {tried} passages; try a stronger --model", 1)
    write_qa(items, out_file)
    out.print(f"{len(items)} questions from {tried} passages -> {out_file} (review them before relying on them)")
