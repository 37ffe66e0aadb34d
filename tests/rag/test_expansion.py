"""Query expansion by a domain lexicon: what the built-in finance lexicon adds, user lexicons,
clear errors, and a question in an analyst's words finding the page in the filing's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest.pipeline import IngestPipeline, open_for_ingest
from rag.config import RetrieveSettings
from rag.expansion import LexiconError, load_lexicon
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from tests.conftest import qa_settings


def test_the_finance_lexicon_adds_the_statements_words_to_an_analysts_question() -> None:
    finance = load_lexicon(["finance"])
    expanded = finance.expand("Is 3M a capital-intensive business based on FY2022 data?")
    question, added = expanded.split("\n")
    assert question == "Is 3M a capital-intensive business based on FY2022 data?", "the question comes first, unchanged"
    assert "purchases of property, plant and equipment" in added and "statements of cash flows" in added
    assert "cost of sales" in finance.expand("How did COGS develop?"), "abbreviations, any case"
    assert "dividends paid" in finance.expand("Has it paid Dividends in Q2?"), "plurals"
    assert "dividends paid" in finance.expand("What was the dividend payout ratio?")


def test_a_phrase_matches_whole_words_only_and_a_question_without_one_is_unchanged() -> None:
    finance = load_lexicon(["finance"])
    for question in ("What steps lower the risk of sepsis?", "Is the debtor's claim valid?", "Who wrote Hamlet?"):
        assert finance.expand(question) == question
    assert load_lexicon([]).expand("What was the capex?") == "What was the capex?", "no lexicon, no change"


def test_a_users_lexicon_file_is_used_and_a_bad_one_says_what_is_wrong(tmp_path: Path) -> None:
    mine = tmp_path / "plant.toml"
    mine.write_text('[[entry]]\nwhen = ["MTBF"]\nadd = "mean time between failures"\n', encoding="utf-8")
    assert load_lexicon([str(mine)]).expand("MTBF of pump P7?") == "MTBF of pump P7?\nmean time between failures"

    broken = tmp_path / "broken.toml"
    broken.write_text('[[entry]]\nwhen = ["MTBF"]\n', encoding="utf-8")
    with pytest.raises(LexiconError, match=r"broken\.toml: \[\[entry\]\] 1: no add; an entry is when = \[phrases\]"):
        load_lexicon([str(broken)])
    with pytest.raises(LexiconError, match=r"'legal' is neither a built-in lexicon \(finance\) nor a TOML file"):
        load_lexicon(["legal"])
    bad_group = tmp_path / "group.toml"
    bad_group.write_text("[[entry]]\nmatch = 'FY(\\d{4})'\nadd = '\\2'\n", encoding="utf-8")
    with pytest.raises(LexiconError, match=r"group\.toml: \[\[entry\]\] 1: invalid group reference 2"):
        load_lexicon([str(bad_group)])
    with pytest.raises(ValueError, match=r"expansions\n  Value error, 'legal' is neither"):
        RetrieveSettings(expansions=["legal"])


@pytest.fixture(scope="module")
def filing(tmp_path_factory: pytest.TempPathFactory, embedder) -> LocalStore:
    """A report whose cash flow statement never says "capex", among pages that say "capital"."""
    docs = tmp_path_factory.mktemp("filing")
    (docs / "cash-flows.md").write_text(
        "# Consolidated Statement of Cash Flows\n\n"
        "Net cash provided by operating activities 6,626. Purchases of property, plant and equipment "
        "(1,749). Proceeds from sale of businesses 2,277.\n",
        encoding="utf-8",
    )
    (docs / "letter.md").write_text(
        "# Letter to Shareholders\n\nOur capital allocation priorities are unchanged: invest in the business, "
        "return capital to shareholders, keep a strong capital structure.\n",
        encoding="utf-8",
    )
    (docs / "people.md").write_text(
        "# Human Capital\n\nWe employ 92,000 people in 70 countries; capital in people is our first priority.\n",
        encoding="utf-8",
    )
    settings = qa_settings(tmp_path_factory.mktemp("filing-data"))
    with open_for_ingest(settings, "filing", embedder) as kb:
        IngestPipeline(settings, embedder, kb).run([docs])
    kb = LocalStore.open(settings.kb_dir("filing"))
    yield kb
    kb.close()


def test_a_question_in_an_analysts_words_finds_the_statement_in_the_filings_words(filing, embedder) -> None:
    question = "What was the company's capex in the year?"
    plain = Retriever(filing, embedder, RetrieveSettings(expansions=[])).search(question, mode="bm25", top_k=3)
    assert "cash-flows.md" not in {Path(h.chunk.source).name for h in plain.hits}, "BM25 alone cannot find it"
    expanded = Retriever(filing, embedder, RetrieveSettings()).search(question, mode="bm25", top_k=3)
    assert Path(expanded.hits[0].chunk.source).name == "cash-flows.md"
    assert expanded.query == question, "the gate and the answer see the question as asked"

    def hybrid_order(settings: RetrieveSettings) -> list[str]:
        return [Path(h.chunk.source).name for h in Retriever(filing, embedder, settings).search(question, top_k=3).hits]

    # The small embedder puts "capital" pages first either way; BM25's share lifts the statement.
    assert hybrid_order(RetrieveSettings(expansions=[]))[-1] == "cash-flows.md"
    assert hybrid_order(RetrieveSettings()).index("cash-flows.md") < hybrid_order(RetrieveSettings()).index("people.md")
