"""`rag ask` and `rag chat`: answers streamed to the terminal, then the passages that back them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from cli.common import answering, err, fail, out, settings_of
from cli.display import snippet
from rag.terminal import printable

if TYPE_CHECKING:
    from rag.qa import QA, Answer, History

ModeOption = Annotated[str | None, typer.Option("--mode", help="hybrid | dense | bm25 (default: retrieve.mode)")]
TopKOption = Annotated[
    int | None,
    typer.Option("--top-k", min=1, help="passages retrieved; those that clear the relevance gate go to the LLM"),
]
GlobOption = Annotated[
    str | None, typer.Option("--only", help="only documents whose path or name matches, e.g. '*.pdf'")
]


def _check_mode(mode: str | None) -> None:
    if mode not in (None, "hybrid", "dense", "bm25"):
        raise fail(f"--mode must be hybrid, dense or bm25, not {mode!r}")


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
    qa = answering(settings_of(ctx), kb)
    filters = Filters(path_glob=only) if only else None
    if json_out:
        answer = qa.ask(question, mode=mode, top_k=top_k, filters=filters)
        out.print_json(json.dumps(answer.to_json(), ensure_ascii=False))
    else:
        answer = stream_answer(qa, question, (), mode=mode, top_k=top_k, filters=filters)
    raise typer.Exit(1 if answer.error else 0)


def chat(
    ctx: typer.Context,
    kb: Annotated[str | None, typer.Option("--kb", help="knowledge base (default: settings.default_kb)")] = None,
    mode: ModeOption = None,
    top_k: TopKOption = None,
) -> None:
    """An interactive session: follow-up questions are understood in the context of earlier ones."""
    _check_mode(mode)
    qa = answering(settings_of(ctx), kb)
    history: list[tuple[str, str]] = []
    err.print("Ask about your documents; an empty line or Ctrl-D ends the session.")
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            break
        if not question or question in ("exit", "quit"):
            break
        answer = stream_answer(qa, question, history, mode=mode, top_k=top_k)
        history += [("user", question), ("assistant", answer.answer)]


def stream_answer(qa: QA, question: str, history: History, **kw) -> Answer:
    """Print the answer as it is generated, then what backs it; hand back the Answer."""
    from rag.qa import Answer

    answer, shown = None, ""
    for item in qa.stream(question, history, **kw):
        if isinstance(item, Answer):
            answer = item
        else:
            shown += item
            out.file.write(printable(item))
            out.file.flush()
    out.file.write("\n")
    if answer.extracted and shown.strip() != answer.answer:  # the copy was shown before it was recognised
        out.print("[bold]Extracted answer:[/] " + escape(printable(answer.answer)), highlight=False)
    print_sources(answer)
    return answer


def print_sources(answer: Answer) -> None:
    """The LLM's error if any, the question searched for when it was rewritten, and the passages
    rag.evidence chose to back the answer."""
    from rag.evidence import evidence_for, source_label

    def label(passage) -> str:
        return printable(source_label(passage), one_line=True)

    if answer.error:
        err.print(f"[bold red]LLM error:[/] {escape(printable(answer.error))}", highlight=False)
    if answer.extracted:
        out.print(f"[dim](extracted from the passages, not generated: {escape(answer.extracted)})[/]", highlight=False)
    if answer.standalone_question != answer.question:
        out.print(f"[dim](searched for: {escape(snippet(answer.standalone_question, 400))})[/]", highlight=False)
    evidence = evidence_for(answer)
    if evidence.kind == "closest":
        if evidence.passages:
            out.print("[bold]Closest passages[/] (none answers the question well enough):")
            for p in evidence.passages:
                out.print(
                    f"  [{p.n}] {label(p)} (similarity {p.similarity:.2f}): {snippet(p.text)}",
                    highlight=False,
                    markup=False,
                )
        return
    if evidence.cited:
        how = " (matched to the answer by wording; the model cited none)" if evidence.kind == "matched" else ""
        out.print(f"[bold]Sources[/]{how}")
    else:
        out.print("[bold]Passages given to the model[/] (the answer cites none of them):")
    for p in evidence.passages:
        out.print(f"  [{p.n}] {label(p)}: {snippet(p.text)}", highlight=False, markup=False)
    if answer.dropped_citations:
        out.print(f"[dim]{answer.dropped_citations} citation(s) pointed at no passage and were dropped[/]")
