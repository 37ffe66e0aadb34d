"""The Chat page: ask a knowledge base, watch the answer stream in, and check every citation
against its source card (file, page, the passage with the sentences that back the answer
highlighted, retrieval score, the original file, the page's text and, for PDF pages and images,
the page itself with the passage marked on it)."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from rag.config import Settings
from rag.evidence import Evidence, Passage, evidence_for, with_matched_markers
from rag.page_image import PageImageError, highlight, render_page
from rag.qa import Answer
from ui import state

CHATS_KEY = "_chats"
OPTIONS_KEY = "_chat_options"
HISTORY_TURNS = 3  # earlier question/answer pairs a follow-up is condensed with
SOURCES = "Sources"
ATTRIBUTED = "Matched to the answer by wording: the model cited no source itself."
MODE_HELP = "hybrid: by meaning (dense vectors) and by keywords (BM25), fused"
USER_AVATAR = ":material/person:"
ASSISTANT_AVATAR = ":material/auto_stories:"
BACKENDS = {"local": "Local (in-process)", "openai": "OpenAI-compatible server (vLLM)"}
_CITE = re.compile(r"[\[【]\s*(\d{1,3}(?:\s*[,，、]\s*\d{1,3})*)\s*[\]】]")
_NUMBER = re.compile(r"\d{1,3}")
PAGE_WIDTH_PX = 1000  # pages are drawn this wide: sharp at the card's width, small enough to send
SHOW_ON_PAGE = "Show on page"
# Clicking [n] scrolls to card n (its href) and opens the card's "Show on page" expander by
# clicking its header, as the user would: the expander's state is Streamlit's own (keyed, and
# rerun on change so the page is only drawn when opened), so it stays open across reruns and
# Python renders its content.  A link cannot reach Python itself, and a query-string link
# reloads the page into a new session (the conversation would be gone).  One listener per page.
_OPEN_PAGE_VIEW_JS = """<script>
(() => {
  if (window.__ragCiteOpensPage) return;
  window.__ragCiteOpensPage = true;
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a.rag-cite");
    if (!link) return;
    const key = "page-" + (link.getAttribute("href") || "").slice(1);
    const view = document.querySelector(".st-key-" + CSS.escape(key) + " details");
    const summary = view && view.querySelector("summary");
    if (summary && !view.open) summary.click();
  });
})();
</script>"""


# ---- options in the sidebar ----------------------------------------------------------------
@dataclass
class ChatOptions:
    """The settings a user touches while asking; everything else comes from rag.toml."""

    mode: str
    top_k: int
    backend: str
    model: str
    adapter: str
    base_url: str
    temperature: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ChatOptions:
        llm = settings.llm
        return cls(
            settings.retrieve.mode,
            settings.retrieve.top_k,
            llm.backend,
            llm.model,
            llm.adapter or "",
            llm.base_url,
            llm.temperature,
        )

    def apply(self, settings: Settings) -> Settings:
        """Settings for one question: the file's, with this session's choices on top."""
        retrieve = settings.retrieve.model_copy(update={"mode": self.mode, "top_k": self.top_k})
        llm = settings.llm.model_copy(
            update={
                "backend": self.backend,
                "model": self.model.strip() or settings.llm.model,
                "adapter": self.adapter.strip() or None,
                "base_url": self.base_url.strip() or settings.llm.base_url,
                "temperature": self.temperature,
            }
        )
        return settings.model_copy(update={"retrieve": retrieve, "llm": llm})


# ---- one exchange --------------------------------------------------------------------------
@dataclass
class Turn:
    id: int
    question: str
    answer: Answer
    evidence: Evidence
    kb: str = ""  # the knowledge base asked

    @property
    def sources(self) -> tuple[Passage, ...]:
        return self.evidence.passages

    @property
    def cited(self) -> bool:
        """The cards are the answer's own sources (not passages offered instead)."""
        return self.evidence.cited


def heading(answer: Answer, evidence: Evidence) -> tuple[str, str]:
    """(heading, note) above an answer's cards; which cards they are is rag.evidence's decision."""
    if answer.error:
        return "Retrieved passages", ""
    if evidence.kind == "closest":
        found = "None of them answers the question well enough."
        return "Closest passages", found if evidence.passages else "The knowledge base holds no passages yet."
    if evidence.cited:
        return SOURCES, ATTRIBUTED if evidence.kind == "matched" else ""
    return "Passages given to the model", "The answer cites none of them."


def sources_for(answer: Answer) -> tuple[str, str, tuple[Passage, ...]]:
    """(heading, note, cards) for an answer: its sources; or, when it cites nothing, the passages
    the model was given; when nothing was found, the closest ones."""
    evidence = evidence_for(answer)
    return (*heading(answer, evidence), evidence.passages)


def anchor(turn_id: int, n: int) -> str:
    return f"src-{turn_id}-{n}"


def answer_html(text: str, linked: Callable[[int], str | None]) -> str:
    """The answer as Markdown that is safe to render with HTML enabled: model output is escaped
    (it may echo document text), link syntax is neutralised, and each citation [n] becomes a
    link to its source card."""
    out: list[str] = []
    last = 0
    for m in _CITE.finditer(text):
        out.append(_escape(text[last : m.start()]))
        parts = []
        for number in _NUMBER.findall(m.group(1)):
            target = linked(int(number))
            label = f"&#91;{number}&#93;"
            parts.append(f'<a class="rag-cite" href="#{target}">{label}</a>' if target else label)
        out.append("".join(parts))
        last = m.end()
    out.append(_escape(text[last:]))
    return "".join(out)


def _escape(text: str) -> str:
    """HTML escaped, and "[", "]" and "$" as entities: Streamlit's Markdown reads text between two
    "$" as LaTeX, which turned "Net sales, 2022: $34,229 … $35,355" into a formula."""
    return html.escape(text).replace("[", "&#91;").replace("]", "&#93;").replace("$", "&#36;")


def _html_text(text: str) -> str:
    """Plain text as one line of HTML: a Markdown HTML block ends at a blank line, after which
    document text would be read as Markdown (a '#' line becoming a heading); "$" as an entity,
    as in `_escape`."""
    return html.escape(text).replace("\r", "").replace("\n", "<br>").replace("$", "&#36;")


def snippet_html(text: str, spans: list[tuple[int, int]]) -> str:
    """The passage with the sentences at `spans` highlighted."""
    out, last = [], 0
    for start, end in spans:
        out.append(_html_text(text[last:start]))
        out.append(f"<mark>{_html_text(text[start:end])}</mark>")
        last = end
    out.append(_html_text(text[last:]))
    return "".join(out).strip()


@st.cache_data(show_spinner=False, max_entries=32)
def page_texts(path: str, mtime: float, size: int) -> dict[int | None, str]:
    """Page number -> text of a document, read again with the ingest loaders (cached by
    modification time, so an edited file is re-read)."""
    from ingest.loaders import load_file

    file = Path(path)
    return {p.page_no: p.text for p in load_file(file, file.read_bytes())}


def page_text(path: str, page: int | None) -> str | None:
    try:
        stat = Path(path).stat()
        return page_texts(path, stat.st_mtime, stat.st_size).get(page)
    except Exception:  # moved, deleted, or no longer parseable: the card shows the passage alone
        return None


@st.cache_data(show_spinner=False, max_entries=48)
def page_picture(path: str, mtime: float, size: int, page: int | None, expect_size: tuple[float, float] | None) -> Any:
    """The page rendered PAGE_WIDTH_PX wide (a PIL image), cached by the file's modification time
    and size, so an edited file is drawn again; PageImageError when it cannot be."""
    return render_page(path, page, PAGE_WIDTH_PX, expect_size=expect_size)


def marked_page(src: Passage, recorded: tuple[float | None, int | None] | None = None) -> Any:
    """The passage's page with its rectangles marked; PageImageError when the page cannot be
    shown: the file is gone, or changed since it was ingested (`recorded`: the document's
    (mtime, size) when it was, where known), so the rectangles would mark the wrong place."""
    file = Path(src.source)
    try:
        stat = file.stat()
    except OSError as exc:
        raise PageImageError(
            f"{file.name} is no longer at {file.parent} (moved or deleted since it was ingested)"
        ) from exc
    if recorded and recorded[1] is not None and recorded[1] != stat.st_size:
        raise PageImageError(
            f"{file.name} changed since it was ingested; ingest it again to see the passage on its page"
        )
    image = page_picture(src.source, stat.st_mtime, stat.st_size, src.page, src.page_size)
    return highlight(image, src.boxes, src.page_size or image.size)


# ---- page ----------------------------------------------------------------------------------
def options(settings: Settings) -> ChatOptions:
    if OPTIONS_KEY not in st.session_state:
        st.session_state[OPTIONS_KEY] = ChatOptions.from_settings(settings)
    return st.session_state[OPTIONS_KEY]


def chats() -> dict[str, list[Turn]]:
    return st.session_state.setdefault(CHATS_KEY, {})


def render() -> None:
    settings = state.settings()
    names = state.kb_names(settings)
    opts = options(settings)
    with st.sidebar:
        name = _sidebar(settings, names, opts)
    st.title("Chat")
    if name is None:
        st.info("There is no knowledge base yet. Create one and add documents to ask about.", icon=":material/info:")
        st.page_link("views/knowledge_bases.py", label="Create a knowledge base", icon=":material/add:")
        return
    kb = state.open_kb(settings, name)
    if kb is None:
        st.warning(f"Knowledge base '{name}' no longer exists.")
        return
    st.caption(f"Answers come only from the documents in **{name}**; each [n] links to the passage it came from.")
    if kb.chunk_count() == 0:
        st.info(f"'{name}' has no documents yet.", icon=":material/description:")
        st.page_link("views/knowledge_bases.py", label="Add documents", icon=":material/upload:")
    turns = chats().setdefault(name, [])
    st.html(_OPEN_PAGE_VIEW_JS, unsafe_allow_javascript=True)
    for turn in turns:
        _show_turn(turn)
    question = st.chat_input("Ask a question about your documents")
    if question and question.strip():
        _ask(opts.apply(settings), name, question.strip(), turns)


def _sidebar(settings: Settings, names: list[str], opts: ChatOptions) -> str | None:
    name = state.current_kb(settings, names)
    if name is None:
        return None
    state.kb_picker(names, name, key="kb_picker_chat")
    state.watch_generation(name)
    if st.button("New conversation", icon=":material/edit_square:", width="stretch", key="new_conversation"):
        chats()[name] = []
    # Widgets are keyed and seeded from the options: the options outlive the widgets, which
    # Streamlit forgets while another page is shown.
    for field_name, value in vars(opts).items():
        st.session_state.setdefault(f"opt_{field_name}", value)
    st.subheader("Retrieval")
    st.radio("Search", ["hybrid", "dense", "bm25"], key="opt_mode", horizontal=True, help=MODE_HELP)
    st.slider("Passages retrieved (top-k)", 1, 20, key="opt_top_k")
    st.subheader("Language model")
    st.selectbox("Backend", ["local", "openai"], key="opt_backend", format_func=BACKENDS.get)
    if st.session_state["opt_backend"] == "openai":
        st.text_input("Model or LoRA adapter name", key="opt_model")
        st.text_input("Server URL", key="opt_base_url")
    else:
        st.text_input("Model", key="opt_model")
        st.text_input("LoRA adapter folder (optional)", key="opt_adapter", placeholder="path to a peft adapter")
    st.slider("Temperature", 0.0, 1.5, step=0.05, key="opt_temperature", help="0 = the same answer every time")
    for field_name in vars(opts):
        setattr(opts, field_name, st.session_state[f"opt_{field_name}"])
    return name


def _history(turns: list[Turn]) -> list[tuple[str, str]]:
    history: list[tuple[str, str]] = []
    for turn in turns[-HISTORY_TURNS:]:
        if turn.answer.found and turn.answer.answer:
            history += [("user", turn.question), ("assistant", turn.answer.answer)]
    return history


def _ask(settings: Settings, name: str, question: str, turns: list[Turn]) -> None:
    from rag.stack import answering

    with st.chat_message("user", avatar=USER_AVATAR):
        st.markdown(_escape(question), unsafe_allow_html=True)
    with st.chat_message("assistant", avatar=ASSISTANT_AVATAR):
        kb = state.open_kb(settings, name)
        try:
            qa = answering(
                settings, kb, embedder=state.embedder(settings), chat_model=state.chat_model_factory(settings)
            )
            stream = qa.stream(question, _history(turns), mode=settings.retrieve.mode, top_k=settings.retrieve.top_k)
            answer = _stream_into(st.empty(), stream)
        except Exception as exc:  # LLM failures are in the Answer; this is anything else (a model missing, say)
            st.error(f"Could not answer: {exc}", icon=":material/error:")
            return
        seq = st.session_state["_turn_seq"] = st.session_state.get("_turn_seq", 0) + 1
        turn = Turn(seq, question, answer, evidence_for(answer), name)
        _answer_body(turn)
    turns.append(turn)


def _stream_into(box: Any, stream: Iterator[str | Answer]) -> Answer:
    """Show tokens as they arrive (with a cursor), then hand back the final Answer."""
    with st.spinner("Searching the documents…"):
        item = next(stream)
    text = ""
    while not isinstance(item, Answer):
        text += item
        box.markdown(f'{answer_html(text, lambda n: None)}<span class="rag-cursor">▌</span>', unsafe_allow_html=True)
        item = next(stream)
    box.empty()
    return item


def _show_turn(turn: Turn) -> None:
    with st.chat_message("user", avatar=USER_AVATAR):
        st.markdown(_escape(turn.question), unsafe_allow_html=True)
    with st.chat_message("assistant", avatar=ASSISTANT_AVATAR):
        _answer_body(turn)


def _answer_body(turn: Turn) -> None:
    answer = turn.answer
    if answer.error:
        st.error(
            f"**The language model did not answer.** {answer.error}. The passages found for your question are below.",
            icon=":material/cloud_off:",
        )
    elif not answer.found:
        st.info(f"**Not found in the documents.** {answer.answer}", icon=":material/search_off:")
    if answer.found and answer.answer:
        numbers = {s.n for s in turn.sources} if turn.cited else set()
        body = answer_html(with_matched_markers(answer), lambda n: anchor(turn.id, n) if n in numbers else None)
        st.markdown(body, unsafe_allow_html=True)
        if answer.extracted:
            st.caption(f"Extracted from the passages, not generated: {answer.extracted}.")
    if answer.standalone_question != answer.question:
        st.caption(f"Searched for: {answer.standalone_question}")
    title, note = heading(answer, turn.evidence)
    if turn.sources:
        muted = f" · <span class='rag-muted'>{html.escape(note)}</span>" if note else ""
        st.markdown(f"**{title}**{muted}", unsafe_allow_html=True)
        for src in turn.sources:
            _source_card(turn, src)
    elif note:
        st.caption(note)
    _timings(answer)


def _source_card(turn: Turn, src: Passage) -> None:
    page = f"page {src.page}" if src.page is not None else ""
    score = f"score {src.score:.3f}" + (f" · similarity {src.similarity:.2f}" if src.similarity is not None else "")
    text = page_text(src.source, src.page)
    with st.container(border=True):
        st.markdown(
            f'<div class="rag-src" id="{anchor(turn.id, src.n)}"><div class="rag-src-head">'
            f'<span class="rag-src-n">{src.n}</span><span class="rag-src-file">{html.escape(src.name)}</span>'
            f'<span class="rag-src-page">{page}</span><span class="rag-src-score">{score}</span></div>'
            f'<div class="rag-snippet">{snippet_html(src.text, turn.evidence.highlights(src))}</div></div>',
            unsafe_allow_html=True,
        )
        left, right = st.columns([1, 3], vertical_alignment="center")
        with left:
            if Path(src.source).is_file():
                st.download_button(
                    "Download file",
                    data=lambda p=src.source: Path(p).read_bytes(),
                    file_name=src.name,
                    key=f"dl-{turn.id}-{src.n}",
                    icon=":material/download:",
                    on_click="ignore",
                    type="tertiary",
                )
        with right:
            if text is not None and src.page is not None:
                with st.expander(f"Text of page {src.page}"):
                    st.markdown(f'<div class="rag-page-text">{_html_text(text)}</div>', unsafe_allow_html=True)
        if src.boxes and src.page_size:
            _page_view(turn, src)


def _page_view(turn: Turn, src: Passage) -> None:
    """ "Show on page": the page as an image with the passage marked, drawn only once opened
    (by the user, or by a click on [n] in the answer: see _OPEN_PAGE_VIEW_JS)."""
    view = st.expander(
        SHOW_ON_PAGE, icon=":material/find_in_page:", key=f"page-{anchor(turn.id, src.n)}", on_change="rerun"
    )
    with view:
        if not view.open:
            return
        try:
            image = marked_page(src, _recorded(turn.kb, src.source))
        except PageImageError as exc:
            st.warning(f"The page cannot be shown: {exc}", icon=":material/broken_image:")
            return
        where = f"page {src.page} of {src.name}" if src.page is not None else src.name
        st.image(image, width="stretch", output_format="PNG", caption=f"{where}: the passage is marked", alt=where)


def _recorded(kb_name: str, path: str) -> tuple[float | None, int | None] | None:
    """(mtime, size) of the document when it was ingested, or None when not known."""
    kb = state.open_kb(state.settings(), kb_name) if kb_name else None
    doc = kb.document_by_path(path) if kb is not None else None
    return (doc.mtime, doc.size) if doc is not None else None


def _seconds(ms: float) -> str:
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.1f} s"


def _timings(answer: Answer) -> None:
    t = answer.timings
    parts = [f"search {_seconds(t['retrieve_ms'])}"] if "retrieve_ms" in t else []
    if "first_token_ms" in t:
        parts.append(f"first words after {_seconds(t['first_token_ms'])}")
    if "total_ms" in t:
        parts.append(f"total {_seconds(t['total_ms'])}")
    if parts:
        st.caption(" · ".join(parts))
