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

from rag.extractive import (
    echo_reason,
    extract,
    named_cell,
    stutter_reason,
    ungrounded_reason,
    units,
    without_repeats,
)
from rag.qa import QA
from rag.retrieve import Filters, Hit, Retriever
from rag.store.local import LocalStore
from rag.types import Chunk
from tests.conftest import MODEL_CACHE, REPO, qa_settings
from tests.fixtures.tables import write_filing_pdf

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
    looped = scripted(settings, retriever, LOOP).ask(EN_QUESTION)  # cut to "The answer is:", which says nothing
    assert looped.answer.startswith("The battery module is covered for ten years") and looped.answer.endswith("[1]")
    assert looped.extracted == "the model stopped before it said anything"
    assert (
        without_repeats("Ten years [1]. The inverter: five years [1].")
        == "Ten years [1]. The inverter: five years [1]."
    )


# The default model's answers on issue 17's try-out: a scanned letter and a 10-K's statements.
LETTER = """Probably you have uses for this facility in your organisation.
Yours sincerely,
Phil.
P.J. CROSS
Group Leader - Facsimile Research
Registered in England: No. 2038"""
LETTER_QUESTION = "Who is the Group Leader of Facsimile Research?"
INVENTED_ROLE = (
    "The group leader of Facsimile Research is the person responsible for the development and management of the "
    "Facsimile Research project."
)
STATEMENT = """Consolidated Statement of Income
Years ended December 31

| (Millions, except per share amounts) | 2022 | 2021 | 2020 |
| --- | --- | --- | --- |
| Net sales | $34,229 | $35,355 | $32,184 |
| Cost of sales | 19,232 | 18,795 | 16,605 |
| Proceeds from sale of businesses, net of cash sold | 13 | — | 576 |
| Net income attributable to 3M | $5,777 | $5,921 | $5,384 |"""
SALES_QUESTION = "What were 3M's total net sales in 2022?"


def hits(*texts: str, title: str = "") -> list[Hit]:
    meta = {"title": title}
    return [Hit(Chunk(text, f"doc{k}.pdf", 1, k, 0, len(text), meta), 1.0) for k, text in enumerate(texts)]


def test_a_figure_or_words_no_passage_holds_are_not_grounded() -> None:
    assert ungrounded_reason("3M's total net sales in 2022 was $15.11 billion.", SALES_QUESTION, [STATEMENT]) == (
        "the model wrote 15.11, a figure no passage holds"
    )
    assert (
        ungrounded_reason(INVENTED_ROLE, LETTER_QUESTION, [LETTER])
        == "half or more of the model's words are in no passage (5 of 5)"
    )
    off_topic = "The 3M Company made changes to the 3M-2022-statements.pdf document."  # p. 7: "3M made changes"
    assert ungrounded_reason(off_topic, SALES_QUESTION, [STATEMENT, "In 2022, 3M made changes to its segments."])
    assert (
        ungrounded_reason("The answer is:", SALES_QUESTION, [STATEMENT]) == "the model stopped before it said anything"
    )
    # what the passages say, in other words or other number formats, is grounded
    assert ungrounded_reason("Net sales were $34229 million in 2022 [1].", SALES_QUESTION, [STATEMENT]) is None
    assert ungrounded_reason("P.J. Cross leads Facsimile Research.", LETTER_QUESTION, [LETTER]) is None
    assert ungrounded_reason("The coolant pump was replaced on 4 June.", "When?", ["replaced on 4 June 2024"]) is None
    assert ungrounded_reason("逆变器的保修期为五年 [1]。", ZH_QUESTION, ["逆变器与通信模块的保修期为五年。"]) is None


def test_a_table_answers_with_the_cell_the_question_names_and_a_signature_with_its_name() -> None:
    statements = hits(STATEMENT, title="3M 2022 statements")
    assert extract(SALES_QUESTION, statements) == (
        "Net sales, 2022: $34,229 (Millions, except per share amounts) [1]",
        [1],
    )
    text, _ = extract("What were 3M's net sales?", statements)  # no year named: every column
    assert text.startswith("Net sales, 2022: $34,229; 2021: $35,355; 2020: $32,184")
    text, numbers = extract(LETTER_QUESTION, hits("Dear Pete, thank you for your letter.", LETTER))
    assert text == "P.J. CROSS Group Leader - Facsimile Research Registered in England: No. 2038 [2]" and numbers == [2]


def test_the_cell_a_question_names_outright_replaces_an_answer_without_its_figure(settings) -> None:
    from rag.qa import Answer

    statements = hits(STATEMENT, title="3M 2022 statements")
    cell = ("$34,229", "Net sales, 2022: $34,229 (Millions, except per share amounts) [1]")
    assert named_cell(SALES_QUESTION, statements) == cell
    assert named_cell("What were 3M's net sales?", statements) is None, "no column named"
    assert named_cell("What were the sales in 2022?", statements) is None, "no row's label is all in the question"
    qa = QA(None, settings, lambda: None)  # only the repair of a finished answer runs
    for said, kept in [("3M made net sales of $5,862 in 2022.", False), ("Net sales were $34,229 million.", True)]:
        answer = Answer(SALES_QUESTION, said, True, "en", SALES_QUESTION, context=statements)
        qa._extract_if_no_answer(answer, None)
        assert (answer.answer, answer.extracted is None) == ((said, True) if kept else (cell[1], False))


def test_a_stutter_is_cut_and_counts_as_no_answer() -> None:
    said = "The 3M-2022-statements" + ".pdf" * 40
    assert without_repeats(said) == "The 3M-2022-statements.pdf"
    assert stutter_reason(said) == "the model said the same few characters over and over"
    assert stutter_reason(STATEMENT) is None and stutter_reason("Ten years [1]. Ten years [1].") is None


@pytest.mark.slow
def test_a_question_about_a_filings_table_is_answered_with_its_figure(settings, embedder, tmp_path: Path) -> None:
    """Issue 17's try-out with the default model: an income statement ruled as filings rule it."""
    from ingest.pipeline import IngestPipeline, open_for_ingest
    from rag.stack import answering

    settings = qa_settings(settings.data_dir)
    short, long = write_filing_pdf(tmp_path / "income.pdf"), write_filing_pdf(tmp_path / "long.pdf", more_rows=40)
    with open_for_ingest(settings, "filing", embedder) as kb:
        assert IngestPipeline(settings, embedder, kb).run([short, long]).added == 2
    with LocalStore.open(settings.kb_dir("filing")) as kb:
        chunks = [c for c in kb.chunks(range(1, 100)).values() if c.source.endswith("long.pdf")]
        first = next(c for c in chunks if "| Net sales |" in c.text)
        assert len(chunks) > 2 and first.text.startswith("Consolidated Statement of Income\n\n| (Millions")
        qa = answering(settings, kb, embedder=embedder)
        for name in ("income.pdf", "long.pdf"):
            answer = qa.ask("What were net sales in 2022?", filters=Filters(path_glob=name))
            assert "34,229" in answer.answer and "35,355" not in answer.answer, (name, answer.answer)
            assert [(Path(c.source).name, c.page) for c in answer.citations] == [(name, 1)]


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
