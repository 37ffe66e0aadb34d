"""Answers a user can read: an echoed question or a copied document is noticed and replaced by the
passages' own sentences, marked as extracted; a repeating answer is cut.  The scripted replies
are real outputs of the default model (SmolLM2-135M) on `make demo`'s questions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from rag.extractive import echo_reason, extract, units, without_repeats
from rag.qa import QA
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from tests.conftest import MODEL_CACHE, REPO, qa_settings

ZH_QUESTION = "海川 H10 的逆变器保修期是几年？"
# transformers and llama.cpp (Q8_0), greedy, on the sample base: the question, then the document.
ZH_ECHO = (
    "海川 H10 的逆变器保修期是几年？\n\n## 产品简介\n\n海川 H10 是一款容量为 10 千瓦时的磷酸铁锂家用储能电池。"
    "白天储存光伏发电的富余电量，夜间或停电时为家庭供电。\n持续输出功率为 5 千瓦，峰值功率为 7.5 千瓦，可持续 10 秒。"
    "\n\n## 保修政策\n\n电池本体保修期为十年，或累计放电量达到 30 兆"
)
ZH_COPY = ZH_ECHO.split("\n\n", 1)[1]  # the same, had it not started with the question
EN_QUESTION = "How long is the battery module covered by the warranty?"
EN_ANSWER = (  # a sentence of the passage, copied: that is an answer
    "The battery module is covered for ten years from the date of installation, or until it has delivered 30 MWh of "
    "energy."
)
LOOP = "The answer is:\n\nThe answer is:\n\nThe answer is:\n\nThe answer is:\n\nThe answer is:"  # llama.cpp, Q4_1


@pytest.fixture
def sample(sample_kb_dir, embedder):
    settings = qa_settings(sample_kb_dir)
    with LocalStore.open(settings.kb_dir("sample")) as kb:
        yield settings, Retriever(kb, embedder, settings.retrieve)


def scripted(settings, retriever, reply: str) -> QA:
    return QA(retriever, settings, lambda: FakeListChatModel(responses=[reply]))


def test_an_echo_or_a_copy_is_no_answer_and_a_copied_sentence_is_one(sample) -> None:
    _, retriever = sample
    passages = [h.chunk.text for h in retriever.search(ZH_QUESTION).relevant]
    assert echo_reason(ZH_ECHO, ZH_QUESTION, passages) == "the model wrote the question back instead of answering"
    assert echo_reason(ZH_COPY, ZH_QUESTION, passages) == "the model copied the passages out instead of answering"
    en = [h.chunk.text for h in retriever.search(EN_QUESTION).relevant]
    assert echo_reason(EN_ANSWER, EN_QUESTION, en) is None
    assert echo_reason("逆变器的保修期为五年 [1]。", ZH_QUESTION, passages) is None


def test_the_extracted_answer_is_the_sentence_that_answers_with_its_citation(sample) -> None:
    _, retriever = sample
    text, numbers = extract(ZH_QUESTION, retriever.search(ZH_QUESTION).relevant)
    assert text == "逆变器与通信模块的保修期为五年。 [1]" and numbers == [1]
    text, numbers = extract(EN_QUESTION, retriever.search(EN_QUESTION).relevant)
    assert text.startswith("The battery module is covered for ten years") and text.endswith("[1]")
    assert "30 MWh of energy, whichever comes first." in text, "a PDF's wrapped lines are one sentence"


def test_an_echo_is_never_shown_and_the_extracted_answer_is_marked(sample) -> None:
    settings, retriever = sample
    items = list(scripted(settings, retriever, ZH_ECHO).stream(ZH_QUESTION))
    answer, streamed = items[-1], "".join(items[:-1])
    assert streamed == answer.answer == "逆变器与通信模块的保修期为五年。 [1]", "the echo never reached the screen"
    assert answer.extracted == "the model wrote the question back instead of answering"
    assert [(Path(c.source).name, c.n) for c in answer.citations] == [("海川储能电池说明.md", 1)]
    assert answer.to_json()["extracted"] is True


def test_a_copy_is_replaced_after_it_streamed_and_a_loop_is_cut(sample) -> None:
    settings, retriever = sample
    copy = scripted(settings, retriever, ZH_COPY).ask(ZH_QUESTION)
    assert copy.answer.startswith("逆变器与通信模块的保修期为五年。") and copy.extracted
    looped = scripted(settings, retriever, LOOP).ask(EN_QUESTION)
    assert looped.answer == "The answer is:" and looped.extracted is None
    assert (
        without_repeats("Ten years [1]. The inverter: five years [1].")
        == "Ten years [1]. The inverter: five years [1]."
    )


def test_switched_off_the_model_text_is_kept_as_it_came(sample) -> None:
    settings, retriever = sample
    off = settings.model_copy(update={"llm": settings.llm.model_copy(update={"extractive_fallback": False})})
    answer = scripted(off, retriever, ZH_ECHO).ask(ZH_QUESTION)
    assert answer.answer == ZH_ECHO.strip() and answer.extracted is None


def test_sentences_keep_headings_and_list_items_apart() -> None:
    text = "Warranty period\nThe battery module is covered\nfor ten years.\n- Inverter: five years\n## Care\nWipe it."
    assert units(text) == [
        "Warranty period",
        "The battery module is covered for ten years.",
        "- Inverter: five years",
        "## Care",
        "Wipe it.",
    ]


@pytest.mark.slow
def test_rag_ask_answers_the_demo_chinese_question_with_the_default_model(sample_kb_dir: Path) -> None:
    """`make demo`'s second question, as a new user runs it: an answer, never the question back."""
    env = {**os.environ, "RAG_DATA_DIR": str(sample_kb_dir), "RAG_CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "400"}
    ask = [sys.executable, "-m", "rag", "ask", ZH_QUESTION, "--kb", "sample"]
    shown = subprocess.run(ask, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert not shown.stdout.startswith(ZH_QUESTION) and "五年" in shown.stdout.split("Sources")[0]
    data = json.loads(subprocess.run([*ask, "--json"], env=env, cwd=REPO, capture_output=True, text=True).stdout)
    assert "五年" in data["answer"] and data["citations"][0]["source"].endswith("海川储能电池说明.md")
    if data["extracted"]:
        assert "(extracted from the passages, not generated: " in shown.stdout
