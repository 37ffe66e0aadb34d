"""The local model on llama.cpp: the real xllamacpp and the packaged SmolLM2, re-quantized as
shipped.  It must behave as the transformers engine does for everything above it: streaming,
stop strings, the token limit, reproducible greedy answers, the deadline, and clear failures."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rag.config import LLMSettings
from rag.llm import Deadline, LLMError, LLMTimeout, local_engine, stream_within, with_token_limit
from tests.conftest import MODEL_CACHE, REPO, qa_settings
from tests.rag.test_llm_deadline import MARGIN_S, join_threads

pytest.importorskip("xllamacpp", reason="the llama.cpp engine needs xllamacpp (make setup installs it)")

COUNT = [("user", "List the planets of the solar system, one per line.")]


@pytest.fixture(scope="module")
def llama():
    from rag.llm import make_chat_model

    chat = make_chat_model(qa_settings(REPO / ".cache" / "unused", llm={"engine": "llamacpp", "max_new_tokens": 60}))
    assert type(chat).__name__ == "LlamaCppChatModel"
    return chat


def test_it_streams_and_greedy_answers_are_reproducible(llama) -> None:
    pieces = [str(c.content) for c in llama.stream(COUNT)]
    assert len([p for p in pieces if p]) > 5, "token by token, not one block at the end"
    text = "".join(pieces)
    assert len(text.split()) >= 8
    assert llama.invoke(COUNT).content == text, "the same answer streamed or not, and every time"
    assert "".join(str(c.content) for c in llama.stream(COUNT)) == text


class _Watched:
    """The real llama.cpp server, noting for every request how many prompt tokens it took from its
    cache and how many it read: `primes` for requests that answer nothing, `answers` for those
    streamed."""

    def __init__(self, server) -> None:
        self.server, self.primes, self.answers = server, [], []

    def handle_chat_completions(self, request, on_chunk=None):
        if on_chunk is None:
            result = self.server.handle_chat_completions(request)
            self.primes.append(_read(result["timings"]))
            return result

        def watch(chunk):
            if isinstance(chunk, dict) and "timings" in chunk:
                self.answers.append(_read(chunk["timings"]))
            return on_chunk(chunk)

        return self.server.handle_chat_completions(request, watch)


def _read(timings: dict) -> tuple[int, int]:
    return timings["cache_n"], timings["prompt_n"]


def _rag(lang: str, question: str) -> list[tuple[str, str]]:
    """The prompt `rag ask` builds, over a sample document as its one source."""
    from rag.prompts import SYSTEM

    name = {"en": "faq.txt", "zh": "海川储能电池说明.md"}[lang]
    text = (REPO / "samples" / "docs" / name).read_text(encoding="utf-8")[:1200]
    head = {"en": "Sources:", "zh": "资料："}[lang]
    ask = {"en": "Question:", "zh": "问题："}[lang]
    return [
        ("system", SYSTEM[lang]),
        ("user", f"{head}\n\n[1] ({name})\n<document>\n{text}\n</document>\n\n{ask} {question}"),
    ]


def test_the_system_prompt_is_read_once_and_answers_stay_those_of_an_uncached_read(llama) -> None:
    english = _rag("en", "How long is the battery module covered by the warranty?")
    chinese = _rag("zh", "海川 H10 的逆变器保修期是几年？")
    cold = llama.server.handle_chat_completions(
        {
            "messages": [{"role": r, "content": c} for r, c in english],
            "max_tokens": 60,
            "temperature": 0.0,
            "cache_prompt": False,
            "seed": 0,
        }
    )
    server = _Watched(llama.server)
    watched = llama.model_copy(update={"server": server})
    asked = (english, chinese, english, COUNT, chinese, english, english)
    answers = [str(watched.invoke(m).content) for m in asked]
    assert answers[0] == cold["choices"][0]["message"]["content"], "the same answer as a prompt read whole"
    assert answers[0] == answers[2] == answers[5] == answers[6], "whatever was asked before, and asked twice"
    assert answers[1] == answers[4]
    read, whole = server.answers, cold["timings"]["prompt_n"]
    system = read[2][0]
    assert 50 < system < whole // 3, read
    assert read[2] == read[5] == read[6] == (system, whole - system), "only what follows the system prompt"
    assert read[3][0] == 0, "a conversation without a system prompt is read whole"
    # Each language's system prompt keeps a slot: after the Chinese question the English system
    # prompt is not read again (only the header of a reply, after it), nor the Chinese one after
    # a conversation without a system prompt, which has a slot of its own.
    assert server.primes[2][0] >= system and server.primes[2][1] < 5, server.primes
    assert server.primes[3][0] > system and server.primes[3][1] < 5, server.primes


def test_a_question_whose_deadline_passes_while_another_is_answered_is_never_read(llama) -> None:
    server = _Watched(llama.server)
    watched = llama.model_copy(update={"server": server})
    started, first = threading.Event(), []

    def answer_first() -> None:
        for chunk in watched.stream(COUNT):
            started.set()
            first.append(str(chunk.content))

    worker = threading.Thread(target=answer_first)
    worker.start()
    assert started.wait(60)
    english = _rag("en", "How long is the battery module covered by the warranty?")
    with pytest.raises(LLMTimeout):
        list(stream_within(watched, english, Deadline(0.2, "the local model smollm2")))
    worker.join(60)
    assert not join_threads("rag-llamacpp", timeout_s=10)
    assert "".join(first) and len(server.answers) == 1 and not server.primes, "neither primed nor read"


def test_stop_strings_cut_the_answer_before_them(llama) -> None:
    full = str(llama.invoke(COUNT).content)
    word = full.split()[len(full.split()) // 2]  # a word from the middle of the answer
    cut = str(llama.invoke(COUNT, stop=[word]).content)
    assert cut == full[: full.index(word)], "everything before the stop string, nothing of it or after"


def test_the_token_limit_holds(llama) -> None:
    full = str(llama.invoke(COUNT).content)
    short = str(with_token_limit(llama, 4).invoke(COUNT).content)
    assert short and full.startswith(short) and len(short) < len(full) // 3


def test_generation_stops_at_the_deadline(llama) -> None:
    deadline = Deadline(2, "the local model smollm2")
    pieces: list[str] = []
    started = time.monotonic()
    with pytest.raises(LLMTimeout) as raised:
        for chunk in stream_within(llama, [("user", "Count from 1 to 1000, one number per line.")], deadline,
                                   max_new_tokens=4000):  # fmt: skip
            pieces.append(str(chunk.content))
    assert time.monotonic() - started < 2 + MARGIN_S
    assert not join_threads("rag-llm-call", timeout_s=5), "generation stopped at its next token"
    assert pieces and f"it had sent {len(''.join(pieces))} character" in str(raised.value)


def test_auto_picks_llamacpp_for_gguf_and_transformers_for_adapters_and_hub_models() -> None:
    assert local_engine(LLMSettings(engine="auto")) == "llamacpp"
    assert local_engine(LLMSettings(engine="auto", adapter="adapters/squad2")) == "transformers"
    assert local_engine(LLMSettings(engine="auto", model="Qwen/Qwen2.5-1.5B-Instruct")) == "transformers"
    assert local_engine(LLMSettings(engine="transformers")) == "transformers"
    with pytest.raises(LLMError, match=r"llm\.adapter .* runs on llm\.engine = 'transformers' only"):
        local_engine(LLMSettings(engine="llamacpp", adapter="adapters/squad2"))
    with pytest.raises(LLMError, match=r"needs a \.gguf file or the packaged default"):
        local_engine(LLMSettings(engine="llamacpp", model="Qwen/Qwen2.5-1.5B-Instruct"))


def test_a_broken_gguf_says_which_file_and_why(tmp_path: Path) -> None:
    from rag.llamacpp import LlamaCppChatModel
    from rag.models import resolve_gguf

    good = resolve_gguf("HuggingFaceTB/SmolLM2-135M-Instruct", MODEL_CACHE, "Q4_0")
    broken = tmp_path / "model.gguf"
    broken.write_bytes(good.read_bytes()[:1_000_000])  # a download cut short
    with pytest.raises(LLMError) as raised:
        LlamaCppChatModel.load(LLMSettings(engine="llamacpp", model=str(broken)), tmp_path)
    message = str(raised.value)
    assert message.startswith(f"llama.cpp could not load {broken}: ")
    assert "failed to read" in message, "the cause llama.cpp printed on stderr"


def test_the_packaged_model_is_requantized_once_keeping_its_chat_template(tmp_path: Path) -> None:
    import gguf

    from rag.models import _packaged_gguf, resolve_gguf

    notes: list[str] = []
    made = resolve_gguf("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path, "Q8_0", notes.append)
    assert made.parent == tmp_path / "models" and len(notes) == 1
    assert resolve_gguf("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path, "Q8_0", notes.append) == made
    assert len(notes) == 1, "once"
    source = gguf.GGUFReader(_packaged_gguf("HuggingFaceTB/SmolLM2-135M-Instruct"))
    copy = gguf.GGUFReader(made)
    template = "tokenizer.chat_template"
    assert copy.fields[template].contents() == source.fields[template].contents()
    kinds = {t.name: t.tensor_type.name for t in copy.tensors}
    assert "Q4_1" not in kinds.values() and "Q8_0" in kinds.values()
    assert list(kinds) == [t.name for t in source.tensors]
