"""Answers as the API and the MCP tools give them: the text with its [n] markers, and the
passages rag.evidence chose to back it, so every surface shows the same sources as `rag ask`.

An answer is generated in a thread of its own (`answer_stream`), from which its pieces reach the
event loop as they come.  When the client goes away, the thread stops at the next piece and
closes the generation, which frees the CPU; an answer slot (server.limits.Slots) is held for
exactly as long as the thread runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from rag.evidence import Evidence, Passage, evidence_for, layout_json, with_matched_markers
from rag.qa import QA, Answer, History
from rag.retrieve import Filters
from server.limits import Slots

T = TypeVar("T")
_END = object()


def passage_json(p: Passage) -> dict[str, Any]:
    """One passage: its number in the answer, where it is (file, page, character span, and the
    rectangles it covers on its page, in units of page_size: empty and null for formats without
    pages), what it says, and how it scored."""
    return {
        "n": p.n,
        "file": Path(p.source).name,
        "document_id": p.doc_id,
        "page": p.page,
        "char_start": p.char_start,
        "char_end": p.char_end,
        "text": p.text,
        "score": p.score,
        "similarity": p.similarity,
        **layout_json(p.boxes, p.page_size),
    }


def answer_text(answer: Answer) -> str:
    """The answer with a [n] after each sentence matched to passage n when the model cited none."""
    return with_matched_markers(answer)


def answer_json(answer: Answer, evidence: Evidence | None = None) -> dict[str, Any]:
    """What backs an answer, as the `rag` field of a chat message and the MCP `ask` result.

    found: False when the documents do not hold the answer ("not found" is an answer, not an
    error).  extracted: why the answer is the passages' own sentences rather than the model's
    text (it wrote the question back, or copied the passages out), else null.  evidence: what
    `citations` are: "cited" (the model's own), "matched" (matched to the answer by wording; the
    model cited none), "context" (the passages it was given; it cited none of them), "closest"
    (not found: the closest passages, none of which answers).
    """
    evidence = evidence or evidence_for(answer)
    return {
        "found": answer.found,
        "evidence": evidence.kind,
        "citations": [passage_json(p) for p in evidence.passages],
        "answer": answer_text(answer),
        "extracted": answer.extracted,
        "standalone_question": answer.standalone_question,
        "error": answer.error,
    }


def stream_in_thread(produce: Callable[[], Iterator[T]], on_exit: Callable[[], None]) -> AsyncIterator[T]:
    """The items of `produce()`, made in a thread started now.  When the consumer stops early the
    thread stops at its next item and closes the iterator; `on_exit` runs when the thread ends,
    whatever happens to the consumer."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    unwanted = threading.Event()

    def hand_over(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            items = produce()
            try:
                for item in items:
                    hand_over(item)
                    if unwanted.is_set():
                        break
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # handed to the consumer, raised there
            hand_over(_Failure(exc))
        finally:
            hand_over(_END)
            on_exit()

    threading.Thread(target=run, name="rag-api-answer", daemon=True).start()
    return _consume(queue, unwanted)


async def _consume(queue: asyncio.Queue[Any], unwanted: threading.Event) -> AsyncIterator[Any]:
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        unwanted.set()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def answer_stream(
    qa: QA,
    slots: Slots,
    question: str,
    history: History = (),
    *,
    mode: str | None = None,
    top_k: int | None = None,
    filters: Filters | None = None,
) -> AsyncIterator[str | Answer]:
    """qa.stream's items (text, then the Answer), generated once an answer slot is free, which
    they hold until the generation ends; APIError 429 when none comes free in time."""
    await slots.acquire_async()
    return stream_in_thread(
        lambda: qa.stream(question, history, mode=mode, top_k=top_k, filters=filters), slots.release
    )


def answer_now(qa: QA, slots: Slots, question: str, history: History = (), **kwargs: Any) -> Answer:
    """The complete Answer, in the calling thread (the MCP tools'), within an answer slot."""
    with slots.held():
        return qa.ask(question, history, **kwargs)
