"""question (+ history) -> condense -> retrieve -> gate -> prompt -> LLM (streamed) -> Answer.

The "not found" decision is made from retrieval, before any model is called: small models
invent answers when the context lacks them, so they are never asked to be the judge.
rag.stack assembles a QA from settings; rag.evidence says which passages back its answers.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.language_models import BaseChatModel

from rag import prompts
from rag.config import Settings
from rag.evidence import Box, attribute, layout_json, on_page
from rag.extractive import (
    QuestionEcho,
    echo_reason,
    extract,
    figures,
    named_cell,
    stutter_reason,
    ungrounded_reason,
    without_repeats,
)
from rag.llm import Deadline, LLMError, invoke_within, stream_within, with_token_limit
from rag.retrieve import Filters, Hit, Retrieval, Retriever


@dataclass(frozen=True)
class Citation:
    n: int
    source: str
    page: int | None
    text: str
    score: float
    chunk_id: int | None
    char_start: int
    char_end: int
    boxes: tuple[Box, ...] = ()  # where the passage sits on its page (see rag.evidence.Passage)
    page_size: tuple[float, float] | None = None


@dataclass
class Answer:
    question: str
    answer: str
    found: bool
    language: str
    standalone_question: str
    citations: list[Citation] = field(default_factory=list)
    citations_attributed: bool = False  # True: the model cited nothing; sources matched by wording
    retrieved: list[Hit] = field(default_factory=list)  # the top_k passages
    context: list[Hit] = field(default_factory=list)  # those that cleared the gate: the numbered blocks
    dropped_citations: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # Why the model's text was replaced by the passages' own sentences (rag.extractive), else None:
    # every surface says the answer was extracted, so nobody takes it for the model's words.
    extracted: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `rag ask --json` object."""
        return {
            "question": self.question,
            "standalone_question": self.standalone_question,
            "answer": self.answer,
            "found": self.found,
            "language": self.language,
            "citations": [
                {
                    "n": c.n,
                    "source": c.source,
                    "page": c.page,
                    "text": c.text,
                    "score": c.score,
                    "chunk_id": c.chunk_id,
                    **layout_json(c.boxes, c.page_size),
                }
                for c in self.citations
            ],
            "retrieved": [
                {
                    "n": i,
                    "source": h.chunk.source,
                    "page": h.chunk.page_no,
                    "text": h.chunk.text,
                    "score": h.score,
                    "similarity": h.similarity,
                    "ranks": h.sources,
                    "chunk_id": h.chunk.chunk_id,
                    **layout_json(*on_page(h.chunk.metadata)),
                }
                for i, h in enumerate(self.retrieved, start=1)
            ],
            "extracted": self.extracted is not None,
            "extracted_because": self.extracted,
            "dropped_citations": self.dropped_citations,
            "timings": self.timings,
            "error": self.error,
        }


History = Sequence[tuple[str, str]]  # ("user" | "assistant", text)


class QA:
    """Answers questions over one knowledge base.  The chat model is created on first need, so
    a question the documents do not cover never pays for loading it."""

    def __init__(self, retriever: Retriever, settings: Settings, chat_model: Callable[[], BaseChatModel]) -> None:
        self.retriever = retriever
        self.settings = settings
        self._make_chat_model = chat_model
        self._chat: BaseChatModel | None = None

    @property
    def chat(self) -> BaseChatModel:
        if self._chat is None:
            self._chat = self._make_chat_model()
        return self._chat

    def ask(self, question: str, history: History = (), **kw: Any) -> Answer:
        for item in self.stream(question, history, **kw):
            if isinstance(item, Answer):
                return item
        raise AssertionError("stream() always ends with an Answer")

    def stream(
        self,
        question: str,
        history: History = (),
        *,
        mode: str | None = None,
        top_k: int | None = None,
        filters: Filters | None = None,
    ) -> Iterator[str | Answer]:
        """Yields answer text as it is generated, then the complete Answer.

        The model calls share one deadline, llm.timeout_s, from the first of them to the last token;
        a timeout keeps the text that had arrived, with answer.error saying so."""
        t0 = time.perf_counter()
        self.retriever.embedder.model  # noqa: B018 - load now, so timings separate loading from searching
        load_ms = _ms(t0, time.perf_counter())
        t0 = time.perf_counter()
        lang = prompts.language(question)
        answer = Answer(question, "", True, lang, question)
        deadline = Deadline.for_answer(self.settings.llm)
        try:
            rewritten = self.condense(question, history, deadline)
        except Exception as exc:  # a failing LLM must not block retrieval: show the passages
            answer.error = describe_llm_error(exc, self.settings)
            rewritten = None
        t1 = time.perf_counter()
        result = self._search(question, history, rewritten, mode=mode, top_k=top_k, filters=filters)
        answer.standalone_question = result.query
        answer.retrieved = result.hits
        answer.context = result.relevant
        t2 = time.perf_counter()
        answer.timings = {"load_ms": load_ms, "condense_ms": _ms(t0, t1), "retrieve_ms": _ms(t1, t2)}
        if not result.found:
            answer.found = False
            answer.answer = prompts.NOT_FOUND[lang]
            answer.timings["total_ms"] = _ms(t0, time.perf_counter())
            yield answer.answer
            yield answer
            return
        if answer.error is None and self._load_chat(answer):
            yield from self._generate(answer, lang, time.perf_counter(), deadline)
        answer.timings["total_ms"] = _ms(t0, time.perf_counter())
        yield answer

    def _search(self, question: str, history: History, rewritten: str | None, **kw: Any) -> Retrieval:
        """Search the rewrite; without one, the previous question's words with the follow-up,
        keeping only passages that pass the gate for the follow-up itself.  Otherwise an
        off-topic follow-up ("capital of France?" after a warranty question) would pass the gate
        on the old topic's words, and the model would invent an answer instead of "not found"."""
        if rewritten:
            return self.retriever.search(rewritten, **kw)
        query = _with_context(question, history)
        result = self.retriever.search(query, **kw)
        if query == question:
            return result
        return Retrieval(result.hits, self.retriever.relevant_to(result.relevant, question), query)

    def _load_chat(self, answer: Answer) -> bool:
        """Load the chat model on first use, counted as loading rather than generation time."""
        started = time.perf_counter()
        try:
            self.chat  # noqa: B018
        except Exception as exc:
            answer.error = describe_llm_error(exc, self.settings)
        answer.timings["load_ms"] += _ms(started, time.perf_counter())
        return answer.error is None

    def _generate(self, answer: Answer, lang: str, t_start: float, deadline: Deadline) -> Iterator[str]:
        messages = prompts.answer_messages(answer.standalone_question, answer.context, lang)
        parts: list[str] = []
        repair = self.settings.llm.extractive_fallback
        shown = yield from self._stream_text(messages, answer, t_start, deadline, parts, watch=repair)
        answer.timings["generate_ms"] = _ms(t_start, time.perf_counter())
        answer.answer = "".join(parts).strip()
        if repair:
            said = answer.answer
            answer.answer = without_repeats(said)
            self._extract_if_no_answer(answer, stutter_reason(said))
        if not shown and answer.answer:  # held back as a possible echo: the extracted answer, or the text after all
            yield answer.answer
        parsed = prompts.parse_citations(answer.answer, len(answer.context))
        answer.dropped_citations = parsed.dropped
        numbers = parsed.numbers
        if _is_refusal(answer.answer, lang):
            answer.found = False
        elif not numbers and answer.answer:
            numbers = attribute(answer.answer, answer.context)
            answer.citations_attributed = bool(numbers)
        answer.citations = [_citation(n, answer.context[n - 1]) for n in numbers]

    def _stream_text(
        self, messages: Any, answer: Answer, t_start: float, deadline: Deadline, parts: list[str], watch: bool
    ) -> Iterator[str]:
        """The model's text as it comes, into `parts`; returns whether any was shown.  When `watch`,
        the start is held back while it could be the question written back, and an echo ends generation."""
        echo = QuestionEcho(answer.standalone_question)
        held: str | None = "" if watch else None
        stream = stream_within(self.chat, messages, deadline)
        try:
            for chunk in stream:
                text = str(chunk.content)
                if not text:
                    continue
                parts.append(text)
                if held is None:
                    if len(parts) == 1:
                        answer.timings["first_token_ms"] = _ms(t_start, time.perf_counter())
                    yield text
                    continue
                held += text
                if echo.undecided(held):
                    continue
                if echo.echoed(held):
                    stream.close()  # generation stops at the next token
                    break
                answer.timings["first_token_ms"] = _ms(t_start, time.perf_counter())
                yield held
                held = None
        except Exception as exc:
            answer.error = describe_llm_error(exc, self.settings)
        if held and not echo.echoed(held):  # an answer shorter than the question, such as "Ten years."
            answer.timings["first_token_ms"] = _ms(t_start, time.perf_counter())
            yield held
            held = None
        return held is None

    def _extract_if_no_answer(self, answer: Answer, reason: str | None) -> None:
        """An answer that broke down (`reason`), an echo of the question, a copy of the passages,
        or an answer they do not ground is replaced by the passages' own sentences; and so is one
        without the figure of the table cell the question names outright, by that cell."""
        if answer.error or _is_refusal(answer.answer, answer.language):
            return
        passages = [h.chunk.text for h in answer.context]
        question = answer.standalone_question
        reason = (
            reason
            or echo_reason(answer.answer, question, passages)
            or ungrounded_reason(answer.answer, question, passages)
        )
        cell = named_cell(question, answer.context)
        if cell is not None and (reason or not figures(cell[0]) <= figures(answer.answer)):
            value, text = cell
            reason = reason or f"a table the passages hold gives {value}, and the model's answer did not"
        else:
            text = extract(question, answer.context)[0] if reason else ""
        if text:
            answer.answer, answer.extracted = text, reason

    def condense(self, question: str, history: History, deadline: Deadline | None = None) -> str | None:
        """A follow-up ("and the inverter?") rewritten to stand alone, so retrieval can find it;
        None when the model gave no usable rewrite.  `deadline`: the answer's, which this call starts."""
        if not history or not self.settings.llm.condense_history:
            return question
        short = with_token_limit(self.chat, 64)
        deadline = deadline or Deadline.for_answer(self.settings.llm)
        rewritten = str(invoke_within(short, prompts.condense_messages(question, history), deadline).content)
        line = rewritten.strip().splitlines()[0].strip(" \"'“”") if rewritten.strip() else ""
        # A small model often answers instead of rewriting; only a question is a usable rewrite.
        if not line.endswith(("?", "？")) or len(line) > 4 * len(question) + 200:
            return None
        return line


def _with_context(question: str, history: History) -> str:
    """The fallback rewrite: the previous question's words plus the follow-up, for retrieval."""
    last_user = next((text for role, text in reversed(history) if role == "user"), "")
    return f"{last_user} {question}".strip()


def _citation(n: int, hit: Hit) -> Citation:
    c = hit.chunk
    return Citation(
        n, c.source, c.page_no, c.text, hit.score, c.chunk_id, c.char_start, c.char_end, *on_page(c.metadata)
    )


def _is_refusal(text: str, lang: str) -> bool:
    refusal = prompts.NOT_FOUND[lang].rstrip(".。")
    return refusal.lower() in text.lower() and len(text) < 2 * len(refusal) + 20


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


def describe_llm_error(exc: BaseException, settings: Settings) -> str:
    """Turn a backend failure into a sentence that says what is wrong and what to do."""
    llm = settings.llm
    if isinstance(exc, LLMError):
        return str(exc)
    # Not imported means not an openai error; importing it here took seconds after a local model's timeout.
    openai = sys.modules.get("openai")
    if openai is not None:
        if isinstance(exc, openai.APITimeoutError):  # a call made without a Deadline: timeout_s is per attempt
            attempts = f"on each of {llm.max_retries + 1} attempts" if llm.max_retries else "(no retries)"
            return (
                f"the LLM server at {llm.base_url} timed out: it sent nothing for {llm.timeout_s:g} s "
                f"(llm.timeout_s) {attempts}"
            )
        if isinstance(exc, openai.APIConnectionError):
            return (
                f"cannot reach the LLM server at {llm.base_url} ({exc.__cause__ or exc}); is it running? "
                "Start one with `rag serve`, or set llm.base_url"
            )
        if isinstance(exc, openai.NotFoundError):
            served = _served_models(settings)
            return f"the LLM server at {llm.base_url} does not serve model {llm.model!r}" + (
                f"; it serves: {', '.join(served)} (set llm.model to one of them)" if served else ""
            )
        if isinstance(exc, openai.APIStatusError):
            return f"the LLM server at {llm.base_url} answered {exc.status_code}: {exc.message}"
    return f"the {llm.backend} LLM failed: {type(exc).__name__}: {exc}"


def _served_models(settings: Settings) -> list[str]:
    try:
        import openai

        client = openai.OpenAI(base_url=settings.llm.base_url, api_key=settings.llm.api_key, timeout=5, max_retries=0)
        return sorted(m.id for m in client.models.list())
    except Exception:
        return []
