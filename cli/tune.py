"""`rag tune data | train | reranker | embedder` and `rag serve`: knowledge base -> SFT set -> LoRA
adapter -> vLLM, and knowledge base -> tuned cross-encoder or embedding model (the work itself is
rag.tune's)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn
from rich.table import Table

from cli.common import err, fail, note, open_kb, out, settings_of
from cli.display import progress_bar

tune_app = typer.Typer(
    help="Tune models on a knowledge base: training data and a LoRA adapter for the answering model, "
    'a cross-encoder that reranks and decides "not found", or the embedding model itself.',
    no_args_is_help=True,
)


# ---- rag tune data -------------------------------------------------------------------------
@tune_app.command("data")
def data(
    ctx: typer.Context,
    qa_file: Annotated[
        Path,
        typer.Option("--qa", help="QA JSONL (as for `rag eval answers`; draft one with `rag eval make-qa`)"),
    ],
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base holding the documents")] = None,
    out_file: Annotated[Path, typer.Option("--out", help="SFT JSONL to write")] = Path("sft.jsonl"),
    split: Annotated[str | None, typer.Option("--split", help='only QA items whose "split" field is this')] = None,
    distractors: Annotated[
        int, typer.Option("--distractors", min=0, help="retrieved non-answer chunks mixed into each context")
    ] = 3,
    no_gold: Annotated[
        float,
        typer.Option("--no-gold", min=0, max=1, help="share of answerable questions also shown without their gold"),
    ] = 0.2,
    validation: Annotated[
        float, typer.Option("--validation", min=0, max=0.9, help="share of questions held out")
    ] = 0.1,
    max_refusals: Annotated[
        float | None,
        typer.Option(
            "--max-refusals",
            min=0,
            max=1,
            help='most examples whose target is "not found", as a share of each split (a seeded sample of the '
            "rest is left out); small models refuse more often than their data does",
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="a seeded sample of this many questions")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Build chat examples: gold chunk(s) among retrieved distractors, the answer citing it like [2].

    "Not found" is the answer for unanswerable questions and for questions shown without their
    gold chunk."""
    from eval.datasets import DatasetError, load_qa, sample
    from rag.stack import retriever_for
    from rag.store import KBError
    from rag.tune.data import KINDS, SPLITS, build_examples, write_sft

    settings = settings_of(ctx)
    try:
        items = sample(load_qa(qa_file, split), limit, seed)
    except DatasetError as exc:
        raise fail(str(exc)) from exc
    base = open_kb(settings, kb)
    try:
        retriever = retriever_for(settings, base)
    except KBError as exc:
        raise fail(str(exc)) from exc
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("questions", total=len(items))
        result = build_examples(
            items,
            retriever,
            distractors=distractors,
            no_gold=no_gold,
            validation=validation,
            max_refusals=max_refusals,
            seed=seed,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    if not result.examples:
        raise fail(f"no usable example from {len(items)} questions: " + _reasons(result.skipped), 1)
    write_sft(result.examples, out_file)
    counts = result.counts()
    table = Table("split", *KINDS, "total", title=f"{len(result.examples)} examples -> {out_file}")
    for s in SPLITS:
        table.add_row(s, *(str(counts[s][k]) for k in KINDS), str(sum(counts[s].values())))
    out.print(table)
    if result.skipped:
        out.print(f"skipped {sum(result.skipped.values())} question(s): {_reasons(result.skipped)}", highlight=False)
    if result.dropped:
        out.print(f"left out {result.dropped} refusal example(s) to keep them at most {max_refusals:.0%} of each split")
    out.print(f"took {time.perf_counter() - started:.0f} s; next: rag tune train --data {out_file} --out adapters/NAME")


def _reasons(skipped: dict[str, int]) -> str:
    return "; ".join(f"{n} {reason}" for reason, n in skipped.items()) or "none"


# ---- rag tune train ------------------------------------------------------------------------
def _train_progress() -> Any:
    """A TrainerCallback drawing a progress bar with the loss and printing the validation loss after
    each epoch (built here so transformers is imported only when training starts)."""
    from transformers import TrainerCallback

    class TrainProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar = progress_bar(TextColumn("loss {task.fields[loss]}"))
            self.task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar.start()
            self.task = self.bar.add_task("training", total=state.max_steps, completed=state.global_step, loss="-")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" in logs and self.task is not None:
                self.bar.update(self.task, completed=state.global_step, loss=f"{logs['loss']:.3f}")
            if "eval_loss" in logs:
                self.bar.console.print(f"epoch {state.epoch:.2f}: validation loss {logs['eval_loss']:.4f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.bar.stop()

    return TrainProgress()


def _with_progress(run: Any, out_dir: Path, errors: tuple[type[Exception], ...]) -> Any:
    """`run(callbacks)` under a training progress bar; its errors, and Ctrl-C (which leaves
    checkpoints to resume from), end the command with one line."""
    progress = _train_progress()
    try:
        return run([progress])
    except errors as exc:
        progress.bar.stop()
        raise fail(str(exc)) from exc
    except KeyboardInterrupt as exc:
        progress.bar.stop()
        raise fail(
            f"interrupted; checkpoints are in {out_dir / 'checkpoints'}: run the same command to resume", 1
        ) from exc


def _print_losses(result: Any) -> None:
    first, last = result.losses[0][1], result.losses[-1][1]
    out.print(f"training loss {first:.3f} -> {last:.3f}", highlight=False)
    for epoch, loss in result.validation_losses:
        out.print(f"validation loss after epoch {epoch:g}: {loss:.4f}", highlight=False)


@tune_app.command("train")
def train_cmd(
    ctx: typer.Context,
    data_file: Annotated[Path, typer.Option("--data", help="SFT JSONL from `rag tune data`")],
    out_dir: Annotated[Path, typer.Option("--out", help="adapter folder to write, e.g. adapters/NAME")],
    base: Annotated[
        str | None,
        typer.Option("--base", help="instruct model: hub id, folder or packaged name (default: llm.model)"),
    ] = None,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank: 1, 8, 16, 32, 64, ... (what vLLM serves)")] = 8,
    alpha: Annotated[int, typer.Option("--alpha", help="LoRA alpha (scale = alpha / rank)")] = 16,
    targets: Annotated[
        str, typer.Option("--targets", help="comma-separated module names")
    ] = "q_proj,k_proj,v_proj,o_proj",
    epochs: Annotated[float, typer.Option("--epochs", min=0.01)] = 1.0,
    lr: Annotated[float, typer.Option("--lr", min=0)] = 2e-4,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="stop after this many steps")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 4,
    grad_accum: Annotated[int, typer.Option("--grad-accum", min=1, help="batches per optimizer step")] = 1,
    max_length: Annotated[int, typer.Option("--max-length", min=16, help="longer examples are skipped")] = 2048,
    save_steps: Annotated[int, typer.Option("--save-steps", min=1, help="checkpoint every this many steps")] = 50,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Train a LoRA adapter with peft; run it again after an interruption to resume.

    The loss is on the answer tokens only; checkpoints go to <out>/checkpoints."""
    from rag.models import ModelNotAvailable, resolve_llm
    from rag.tune.data import SFTDataError
    from rag.tune.train import TrainConfig, TrainError, train

    settings = settings_of(ctx)
    name = base or settings.llm.model
    try:
        path = resolve_llm(name, settings.cache_dir, notify=note)
    except ModelNotAvailable as exc:
        raise fail(str(exc)) from exc
    config = TrainConfig(
        data=data_file,
        out=out_dir,
        base=path,
        base_name=name,
        rank=rank,
        alpha=alpha,
        targets=tuple(t.strip() for t in targets.split(",") if t.strip()),
        epochs=epochs,
        lr=lr,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_length=max_length,
        save_steps=save_steps,
        seed=seed,
    )
    result = _with_progress(lambda callbacks: train(config, callbacks=callbacks), out_dir, (TrainError, SFTDataError))
    out.print(
        f"adapter -> {result.adapter} ({result.steps} steps of {batch_size * grad_accum} examples, "
        f"{result.train_examples} in the training set, "
        f"{result.seconds / 60:.1f} min{', resumed from ' + result.resumed_from if result.resumed_from else ''})",
        highlight=False,
    )
    _print_losses(result)
    if result.skipped_too_long:
        out.print(f"[yellow]{result.skipped_too_long} example(s) longer than --max-length {max_length} were skipped")
    out.print(f"use it in-process: RAG_LLM__ADAPTER={result.adapter} rag ask ...", highlight=False, soft_wrap=True)
    out.print(
        f"or serve it: rag serve --adapter {result.adapter.name}={result.adapter}", highlight=False, soft_wrap=True
    )


# ---- rag tune reranker | embedder ----------------------------------------------------------
DEFAULT_RERANKER_BASE = "sentence-transformers/all-MiniLM-L6-v2"
_QA_HELP = "QA JSONL with gold_doc_ids (draft one with `rag eval make-qa`)"
_BEIR_HELP = "a BEIR folder: positives from its qrels (instead of --qa)"
_KB_HELP = "knowledge base holding the documents (with --beir: the corpus's eval base)"
_SPLIT_HELP = '--qa: items whose "split" is this; --beir: the qrels split'


def _mined(
    ctx: typer.Context,
    qa_file: Path | None,
    beir: Path | None,
    kb: str | None,
    split: str | None,
    base: str,
    limit: int | None,
    validation: float,
    seed: int,
) -> tuple[Any, dict[str, Any], str]:
    """The questions' labelled lists, searched as `rag ask` searches (no reranker), what they came
    from (for training.json), and the base model's path."""
    from eval.datasets import DatasetError, beir_to_qa, load_qa, sample
    from rag.models import ModelNotAvailable, resolve_embedder
    from rag.tune.reranker import mine

    if (qa_file is None) == (beir is None):
        raise fail("give one of --qa QA.jsonl or --beir DIR")
    settings = settings_of(ctx)
    settings = settings.model_copy(update={"retrieve": settings.retrieve.model_copy(update={"rerank_model": None})})
    try:
        items = load_qa(qa_file, split) if qa_file else beir_to_qa(beir, split or "train", need_answers=False)  # type: ignore[arg-type]
        path = resolve_embedder(base)
    except (DatasetError, ModelNotAvailable) as exc:
        raise fail(str(exc)) from exc
    items = sample(items, limit, seed)
    retriever = _mining_retriever(settings, kb, beir)
    source = {"qa": str(qa_file) if qa_file else None, "beir": str(beir) if beir else None, "split": split}
    source |= {"kb": getattr(retriever.kb, "name", kb), "limit": limit}
    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("hard negatives", total=len(items))
        mined = mine(
            items,
            retriever,
            depth=settings.retrieve.rerank_candidates,
            validation=validation,
            seed=seed,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    counts = {s: len(mined.split(s)) for s in ("train", "validation")}
    note(
        f"{counts['train']} training and {counts['validation']} validation questions "
        f"({time.perf_counter() - started:.0f} s)"
        + (f"; skipped {_reasons(dict(mined.skipped))}" if mined.skipped else "")
    )
    return mined, source, path


def _print_run(what: str, result: Any, examples: int, unit: str) -> None:
    out.print(
        f"{what} -> {result.out} ({result.steps} steps, {examples} {unit}, "
        f"{result.seconds / 60:.1f} min{', resumed from ' + result.resumed_from if result.resumed_from else ''})",
        highlight=False,
    )
    _print_losses(result)


@tune_app.command("reranker")
def reranker_cmd(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write, e.g. rerankers/NAME")],
    qa_file: Annotated[Path | None, typer.Option("--qa", help=_QA_HELP)] = None,
    beir: Annotated[Path | None, typer.Option("--beir", help=_BEIR_HELP)] = None,
    kb: Annotated[str | None, typer.Option("--kb", help=_KB_HELP)] = None,
    split: Annotated[str | None, typer.Option("--split", help=_SPLIT_HELP)] = None,
    base: Annotated[
        str,
        typer.Option("--base", help="model to start from: a cross-encoder or sentence-transformers folder or hub id"),
    ] = DEFAULT_RERANKER_BASE,
    negatives: Annotated[int, typer.Option("--negatives", min=1, help="hard negatives per question")] = 7,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="a seeded sample of this many questions")] = None,
    validation: Annotated[
        float, typer.Option("--validation", min=0, max=0.9, help="share of questions held out to calibrate")
    ] = 0.1,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01)] = 1.0,
    lr: Annotated[float, typer.Option("--lr", min=0)] = 3e-5,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="stop after this many steps")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_length: Annotated[int, typer.Option("--max-length", min=16, help="tokens of question + passage")] = 256,
    save_steps: Annotated[int, typer.Option("--save-steps", min=1, help="checkpoint every this many steps")] = 100,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Fine-tune a cross-encoder on a knowledge base: it reorders the passages and, calibrated on
    held-out questions, decides "not found"; run it again after an interruption to resume.

    Hard negatives are the retriever's own high-ranked passages that are not gold.  Use the
    result with RAG_RETRIEVE__RERANK_MODEL=<out>."""
    from rag.tune.reranker import RerankerConfig, train_reranker
    from rag.tune.train import TrainError

    mined, source, path = _mined(ctx, qa_file, beir, kb, split, base, limit, validation, seed)
    config = RerankerConfig(
        out=out_dir, base=path, base_name=base, negatives=negatives, epochs=epochs, lr=lr, max_steps=max_steps,
        batch_size=batch_size, max_length=max_length, save_steps=save_steps, seed=seed,
    )  # fmt: skip
    result = _with_progress(lambda callbacks: train_reranker(config, mined, source, callbacks), out_dir, (TrainError,))
    _print_run("reranker", result, result.train_pairs, "training pairs")
    c = result.calibration
    out.print(
        f'"not found" below a best-passage score of {c.threshold:.3f}: on the {c.measured_on} questions it '
        f"answers {c.discrimination:.2f} more often with an answering passage than without",
        highlight=False,
    )
    out.print(f"use it: RAG_RETRIEVE__RERANK_MODEL={result.out} rag ask ...", highlight=False, soft_wrap=True)


@tune_app.command("embedder")
def embedder_cmd(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write, e.g. embedders/NAME")],
    qa_file: Annotated[Path | None, typer.Option("--qa", help=_QA_HELP)] = None,
    beir: Annotated[Path | None, typer.Option("--beir", help=_BEIR_HELP)] = None,
    kb: Annotated[str | None, typer.Option("--kb", help=_KB_HELP)] = None,
    split: Annotated[str | None, typer.Option("--split", help=_SPLIT_HELP)] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="sentence-transformers folder or hub id to start from (default: embed.model)"),
    ] = None,
    negatives: Annotated[int, typer.Option("--negatives", min=1, help="hard negatives per question")] = 1,
    positives: Annotated[
        int, typer.Option("--positives", min=1, help="gold passages per question, the retriever's best first")
    ] = 1,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="a seeded sample of this many questions")] = None,
    validation: Annotated[
        float, typer.Option("--validation", min=0, max=0.9, help="share of questions held out for the loss")
    ] = 0.1,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01)] = 3.0,
    lr: Annotated[float, typer.Option("--lr", min=0)] = 3e-5,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="stop after this many steps")] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=2, help="questions per step; each is scored against every passage")
    ] = 32,
    save_steps: Annotated[int, typer.Option("--save-steps", min=1, help="checkpoint every this many steps")] = 50,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Fine-tune the embedding model on a knowledge base's questions, so dense search ranks the
    domain's passages as its questions need; run it again after an interruption to resume.

    Positives are the gold passages, hard negatives the retriever's own high-ranked passages that
    are not gold.  The vectors change: ingest again into a new knowledge base with
    RAG_EMBED__MODEL=<out> (and keep that setting to search it)."""
    from rag.tune.embedder import EmbedderConfig, train_embedder
    from rag.tune.train import TrainError

    embed = settings_of(ctx).embed
    base = base or embed.model
    mined, source, path = _mined(ctx, qa_file, beir, kb, split, base, limit, validation, seed)
    config = EmbedderConfig(
        out=out_dir, base=path, base_name=base, negatives=negatives, positives=positives, epochs=epochs, lr=lr,
        max_steps=max_steps, batch_size=batch_size, save_steps=save_steps, seed=seed,
        query_prefix=embed.query_prefix, passage_prefix=embed.passage_prefix,
    )  # fmt: skip
    result = _with_progress(lambda callbacks: train_embedder(config, mined, source, callbacks), out_dir, (TrainError,))
    _print_run("embedding model", result, result.train_triplets, "training triplets")
    out.print(
        f"use it: RAG_EMBED__MODEL={result.out} rag ingest DOCS --kb NEW_NAME, and the same setting to search it",
        highlight=False,
        soft_wrap=True,
    )


def _mining_retriever(settings: Any, kb: str | None, beir: Path | None) -> Any:
    """The first-stage retriever over `kb`, or over the BEIR corpus's eval base (built now if needed)."""
    from rag.stack import embedder_for, retriever_for

    if kb is not None or beir is None:
        return retriever_for(settings, open_kb(settings, kb))
    from eval.datasets import DatasetError, load_beir
    from eval.retrieval import corpus_kb

    try:
        dataset = load_beir(beir, "test") if (beir / "qrels" / "test.tsv").is_file() else None
    except DatasetError as exc:
        raise fail(str(exc)) from exc
    if dataset is None:
        raise fail(f"{beir}: no qrels/test.tsv to name its eval base by; give --kb")
    embedder = embedder_for(settings)
    with err.status(f"the corpus of {beir} as a knowledge base (ingested once) ..."):
        store, _ = corpus_kb(settings, dataset, embedder)
    return retriever_for(settings, store, embedder=embedder)


# ---- rag serve -----------------------------------------------------------------------------
def serve(
    ctx: typer.Context,
    base: Annotated[
        str | None, typer.Option("--base", help="base model: hub id, folder or packaged default (default: llm.model)")
    ] = None,
    adapter: Annotated[
        list[str] | None, typer.Option("--adapter", help="NAME=PATH of a LoRA adapter folder; repeat for several")
    ] = None,
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    host: Annotated[str, typer.Option("--host", help="0.0.0.0 to accept other machines")] = "127.0.0.1",
    max_model_len: Annotated[
        int | None, typer.Option("--max-model-len", min=64, help="context length (default: 4096 on CPU)")
    ] = None,
    vllm_python: Annotated[
        Path | None, typer.Option("--vllm-python", help="Python of an environment with vLLM (default: .venv-serve)")
    ] = None,
    log: Annotated[Path | None, typer.Option("--log", help="vLLM's log file")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="seconds to wait for /health")] = 600,
) -> None:
    """Serve the base model and LoRA adapters with vLLM's OpenAI-compatible server, until Ctrl-C.

    Prints the base_url and model names for rag.toml: llm.backend = "openai", llm.model = an
    adapter's NAME (or the base's name)."""
    from rag.models import ModelNotAvailable, resolve_llm
    from rag.tune.serve import ServeConfig, ServeError, VLLMServer, find_runtime, load_adapter, parse_adapter

    settings = settings_of(ctx)
    name = base or settings.llm.model
    try:
        adapters = [load_adapter(*parse_adapter(spec)) for spec in adapter or []]
        runtime = find_runtime(vllm_python)
        model = resolve_llm(name, settings.cache_dir, notify=note)
    except (ServeError, ModelNotAvailable) as exc:
        raise fail(str(exc)) from exc
    names = [a.name for a in adapters]
    if len(set(names)) != len(names) or name in names:
        raise fail(f"adapter names must be unique and differ from the base's ({name}): {', '.join(names)}")
    for a in adapters:
        if a.base and a.base != name:
            err.print(f"[yellow]warning[/]: adapter {a.name!r} was trained on {a.base!r}, not {name!r}")
    served_name = name if not Path(name).expanduser().exists() else Path(name).name
    config = ServeConfig(model, served_name, adapters, host, port, max_model_len)
    log_path = log or settings.cache_dir / "serve" / f"vllm-{port}.log"
    server = VLLMServer(config, runtime, log_path)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops vLLM too, like Ctrl-C
    try:
        with err.status(f"starting {runtime.package} {runtime.version} (log: {log_path}) ..."):
            server.start()
            server.wait_ready(timeout)
        _print_ready(config)
        server.process.wait()  # type: ignore[union-attr]
        raise fail(f"vLLM exited with status {server.process.returncode}:\n{server.log_tail()}", 1)  # type: ignore[union-attr]
    except ServeError as exc:
        raise fail(str(exc), 1) from exc
    except KeyboardInterrupt:
        err.print("stopping vLLM ...")
    finally:
        server.stop()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _print_ready(config: Any) -> None:
    out.print(f"vLLM is serving on {config.base_url}", highlight=False)
    out.print(f"base_url = {config.base_url}", highlight=False)
    out.print(f"base model = {config.served_name}", highlight=False)
    for a in config.adapters:
        out.print(f"adapter = {a.name} (rank {a.rank}, {a.path})", highlight=False)
    chosen = config.adapters[0].name if config.adapters else config.served_name
    out.print(
        f'\nin rag.toml:\n[llm]\nbackend = "openai"\nbase_url = "{config.base_url}"\nmodel = "{chosen}"\n'
        "Stop with Ctrl-C.",
        highlight=False,
        markup=False,
    )
