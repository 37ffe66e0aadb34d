"""Retrieval on real data: each mode finds the gold SciFact abstract; fusion, gating, filters,
the reranker path and the LangChain adapter behave as a user relies on."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ingest.pipeline import IngestPipeline, open_for_ingest
from rag.config import RetrieveSettings
from rag.reranker import RerankerError
from rag.retrieve import Filters, Retriever, fuse
from rag.store.dense import dead_count
from rag.store.local import LocalStore
from rag.types import Chunk
from tests.conftest import qa_settings, shared_path

N_QUERIES = 12


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def ingested(factory: pytest.TempPathFactory, name: str, files: dict[str, str], embedder) -> LocalStore:
    """Base `name` holding `files` (file name -> text), ingested as `rag ingest` does, open."""
    folder = factory.mktemp(f"{name}-docs")
    for file, text in files.items():
        (folder / file).write_text(text, encoding="utf-8")
    settings = qa_settings(factory.mktemp(f"{name}-data"))
    with open_for_ingest(settings, name, embedder) as kb:
        IngestPipeline(settings, embedder, kb).run([folder])
    return LocalStore.open(settings.kb_dir(name))


@pytest.fixture(scope="module")
def scifact(tmp_path_factory: pytest.TempPathFactory, embedder):
    """The gold abstracts of the first test queries plus random distractors, ingested as files."""
    root = shared_path("beir", "scifact")
    corpus = {d["_id"]: d for d in map(json.loads, read_lines(root / "corpus.jsonl"))}
    queries = {q["_id"]: q["text"] for q in map(json.loads, read_lines(root / "queries.jsonl"))}
    gold: dict[str, str] = {}
    for line in read_lines(root / "qrels" / "test.tsv")[1:]:
        qid, did, _ = line.split("\t")
        if qid not in gold and len(gold) < N_QUERIES:
            gold[qid] = did
    pool = sorted(set(corpus) - set(gold.values()))
    chosen = set(gold.values()) | set(random.Random(7).sample(pool, 60))
    files = {f"{did}.txt": f"{corpus[did]['title']}\n\n{corpus[did]['text']}" for did in chosen}
    with ingested(tmp_path_factory, "scifact", files, embedder) as kb:
        yield kb, [(queries[q], d) for q, d in gold.items()]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_each_mode_ranks_the_gold_abstract_first(scifact, embedder, mode: str) -> None:
    kb, pairs = scifact
    retriever = Retriever(kb, embedder, RetrieveSettings())
    firsts = [Path(retriever.search(q, mode=mode, top_k=5).hits[0].chunk.source).stem == gold for q, gold in pairs]
    assert sum(firsts) >= 0.75 * len(pairs), f"{mode}: gold first for only {sum(firsts)}/{len(pairs)}"


def test_hybrid_hits_say_which_retrievers_found_them(scifact, embedder) -> None:
    kb, pairs = scifact
    hits = Retriever(kb, embedder, RetrieveSettings()).search(pairs[0][0], top_k=5).hits
    assert all(set(h.sources) <= {"dense", "bm25"} and h.sources for h in hits)
    assert any(set(h.sources) == {"dense", "bm25"} for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_rrf_fusion_by_hand() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    bm25 = [(3, 12.0), (1, 5.0)]
    fused = dict(fuse({"dense": dense, "bm25": bm25}, "rrf", 60, {}))
    assert fused[1] == pytest.approx(1 / 61 + 1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert [cid for cid, _ in fuse({"dense": dense, "bm25": bm25}, "rrf", 60, {})] == [1, 3, 2]


def test_weights_and_zscore_fusion() -> None:
    dense = [(1, 0.9), (2, 0.5)]
    bm25 = [(2, 30.0), (1, 1.0)]
    assert fuse({"dense": dense, "bm25": bm25}, "rrf", 60, {"bm25": 2.0})[0][0] == 2
    z = dict(fuse({"dense": dense, "bm25": bm25}, "zscore", 60, {}))
    assert z[1] == pytest.approx(z[2])  # symmetric: each is one std ahead in one list
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse({"dense": dense}, "max", 60, {})


def test_zscore_fusion_with_complete_scores_credits_what_a_list_cut_off() -> None:
    dense = [(1, 0.9), (2, 0.5)]
    bm25 = [(2, 30.0), (3, 10.0)]
    # Chunk 3 was third for dense (cut off at depth 2) with cosine 0.8; chunk 1 had no BM25 match.
    complete = {"dense": {1: 0.9, 2: 0.5, 3: 0.8}, "bm25": {1: 0.0, 2: 30.0, 3: 10.0}}
    fused = dict(fuse({"dense": dense, "bm25": bm25}, "zscore", 60, {}, complete))
    # per list: dense mean 0.7 std 0.2; bm25 mean 20 std 10
    assert fused[1] == pytest.approx((0.9 - 0.7) / 0.2 + (0 - 20) / 10)
    assert fused[3] == pytest.approx((0.8 - 0.7) / 0.2 + (10 - 20) / 10)
    assert list(fused) == [2, 3, 1]
    lists_only = [cid for cid, _ in fuse({"dense": dense, "bm25": bm25}, "zscore", 60, {})]
    assert lists_only.index(3) > lists_only.index(1)  # without complete scores, 3 loses its dense credit


def test_minmax_fusion_scales_each_retriever_over_every_candidate() -> None:
    dense = [(1, 0.9), (2, 0.5)]
    bm25 = [(2, 30.0), (3, 10.0)]
    complete = {"dense": {1: 0.9, 2: 0.5, 3: 0.8}, "bm25": {1: 0.0, 2: 30.0, 3: 10.0}}
    fused = dict(fuse({"dense": dense, "bm25": bm25}, "minmax", 60, {"bm25": 0.5}, complete))
    # over the union {1, 2, 3}: dense spans 0.5..0.9, bm25 0..30
    assert fused[1] == pytest.approx((0.9 - 0.5) / 0.4 + 0.5 * 0.0)
    assert fused[2] == pytest.approx(0.0 + 0.5 * 1.0)
    assert fused[3] == pytest.approx((0.8 - 0.5) / 0.4 + 0.5 * 10 / 30)
    assert list(fused) == [1, 3, 2]
    # without complete scores each list is scaled over itself and a miss counts as its worst hit
    lists_only = dict(fuse({"dense": dense, "bm25": bm25}, "minmax", 60, {}))
    assert lists_only == pytest.approx({1: 1.0, 2: 1.0, 3: 0.0})


def test_chinese_questions_rank_by_bm25_with_the_english_only_embedder(sample_kb_dir, embedder) -> None:
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        retriever = Retriever(kb, embedder, RetrieveSettings(top_k=4))
        question = "海川 H10 的保修期是多久？"
        hybrid = [h.chunk.chunk_id for h in retriever.search(question, mode="hybrid").hits]
        bm25 = [h.chunk.chunk_id for h in retriever.search(question, mode="bm25").hits]
        assert bm25 and hybrid[: len(bm25)] == bm25


def test_equal_bm25_scores_put_the_chunk_holding_the_words_first(sample_kb_dir, embedder) -> None:
    """The Chinese sample has two chunks and BM25 indexes each with its neighbour, so both score
    the same; the one that says how long the inverter warranty is must come first, on any store."""
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        retriever = Retriever(kb, embedder, RetrieveSettings(top_k=2))
        first, second = retriever.search("海川 H10 的逆变器保修期是几年？", mode="bm25").hits
        assert first.score == pytest.approx(second.score, rel=1e-5), "a tie, from the shared window"
        assert "逆变器与通信模块的保修期为五年" in first.chunk.text and "日常维护" in second.chunk.text
        assert first.coverage > second.coverage


def test_relevance_gate_on_the_sample_documents(sample_kb_dir, embedder) -> None:
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        retriever = Retriever(kb, embedder, RetrieveSettings())
        assert retriever.search("How long is the battery module under warranty?").found
        assert retriever.search("海川 H10 的保修期是多久？").found
        for off_topic in ["What is the capital of France?", "How do I bake sourdough bread?", "如何做红烧肉？"]:
            result = retriever.search(off_topic)
            assert not result.found and result.relevant == [] and result.hits, off_topic


def test_filters_restrict_documents(sample_kb_dir, embedder) -> None:
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        retriever = Retriever(kb, embedder, RetrieveSettings())
        for mode in ["dense", "bm25", "hybrid"]:
            hits = retriever.search("battery operating modes", mode=mode, filters=Filters(path_glob="*.md")).hits
            assert hits and all(h.chunk.source.endswith(".md") for h in hits)
        faq = kb.document_by_path(str(Path(kb.documents()[0].path).parent / "faq.txt"))
        hits = retriever.search("warranty", filters=Filters(doc_ids=[faq.doc_id])).hits
        assert {h.chunk.source for h in hits} == {faq.path}
        assert retriever.search("warranty", filters=Filters(path_glob="*.docx")).hits == []


PUMP_MANUAL = {
    "p7-spring.txt": "Every spring the P7 pump needs its impeller inspected for wear before the irrigation season "
    "starts.",
    "p7-season.txt": "Before the irrigation season, the P7 pump is primed and its impeller checked.",
    "p7-impeller.txt": "The P7 impeller is inspected by removing the volute cover and checking the vane tips for "
    "pitting.",
    "vanes.txt": "Worn vane tips and pitting mean the impeller must be replaced with kit K-22.",
    "car.txt": "A car needs its tyres checked every spring after winter driving.",
    "garden.txt": "In spring the garden beds need compost and the roses need pruning.",
    "office.txt": "Spring cleaning of the office kitchen is done every April by the facilities team.",
}


@pytest.fixture(scope="module")
def pump_manual(tmp_path_factory: pytest.TempPathFactory, embedder):
    with ingested(tmp_path_factory, "pumps", PUMP_MANUAL, embedder) as kb:
        yield kb


def test_feedback_brings_up_the_passage_worded_like_the_best_ones_not_like_the_question(pump_manual, embedder) -> None:
    """The question shares "needs ... checked every spring" with the car passage and hardly a word
    with how the impeller is inspected; the two best passages are about that impeller."""
    question = "What does the P7 pump need every spring?"

    def top3(feedback: int) -> list[str]:
        settings = RetrieveSettings(feedback_passages=feedback, top_k=3)
        return [Path(h.chunk.source).stem for h in Retriever(pump_manual, embedder, settings).search(question).hits]

    assert top3(0) == ["p7-spring", "p7-season", "car"]
    assert top3(2) == ["p7-spring", "p7-season", "p7-impeller"]


def test_feedback_keeps_the_gate_on_the_question_and_the_search_within_the_filters(pump_manual, embedder) -> None:
    plain = Retriever(pump_manual, embedder, RetrieveSettings(top_k=7)).search("How do I prune roses?")
    moved = Retriever(pump_manual, embedder, RetrieveSettings(feedback_passages=2, top_k=7)).search(
        "How do I prune roses?"
    )
    closeness = {h.chunk.chunk_id: (h.similarity, h.coverage) for h in plain.hits}
    assert {h.chunk.chunk_id: (h.similarity, h.coverage) for h in moved.hits} == closeness
    assert [Path(h.chunk.source).stem for h in moved.relevant] == ["garden"]

    only_p7 = Filters(path_glob="p7-*")
    hits = (
        Retriever(pump_manual, embedder, RetrieveSettings(feedback_passages=2))
        .search("What does the P7 pump need every spring?", filters=only_p7)
        .hits
    )
    assert sorted(Path(h.chunk.source).stem for h in hits) == ["p7-impeller", "p7-season", "p7-spring"]


def test_feedback_leaves_chinese_questions_as_they_were_while_the_dense_side_is_weighted_0(
    sample_kb_dir, embedder
) -> None:
    """The English-only embedder gets weight 0 for Chinese (dense_weight_zh): moving its vector
    could only reshuffle BM25's ties, which are broken by the dense ranks."""
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        for question in ["海川 H10 的保修期是多久？", "逆变器的工作模式有哪些？"]:
            plain, moved = (
                Retriever(kb, embedder, RetrieveSettings(feedback_passages=n)).search(question).hits for n in (0, 3)
            )
            assert [(h.chunk.chunk_id, h.sources) for h in moved] == [(h.chunk.chunk_id, h.sources) for h in plain]


def test_a_base_built_by_another_model_is_refused(sample_kb_dir, embedder) -> None:
    from rag.config import EmbedSettings
    from rag.embed import Embedder
    from rag.store import ModelMismatch

    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb, pytest.raises(ModelMismatch):
        Retriever(kb, Embedder(EmbedSettings(model="BAAI/bge-small-en-v1.5")), RetrieveSettings())


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """A randomly initialised BERT cross-encoder built locally (none ships offline)."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-reranker")
    config = BertConfig(
        vocab_size=embedder.tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    embedder.tokenizer.save_pretrained(folder)
    return folder


def test_reranker_reorders_the_fused_list_by_its_scores(sample_kb_dir, embedder, tiny_cross_encoder) -> None:
    from sentence_transformers import CrossEncoder

    settings = RetrieveSettings(rerank_model=str(tiny_cross_encoder), rerank_candidates=6, top_k=4)
    query = "How long is the battery module under warranty?"
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        hits = Retriever(kb, embedder, settings).search(query).hits
        assert len(hits) == 4 and all("rerank" in h.sources for h in hits)
        assert [h.sources["rerank"] for h in hits] == [1, 2, 3, 4]
        expected = CrossEncoder(str(tiny_cross_encoder)).predict([(query, h.chunk.text) for h in hits])
        assert [h.score for h in hits] == pytest.approx(sorted(expected.tolist(), reverse=True), abs=1e-5)
        assert [h.rerank for h in hits] == [h.score for h in hits]
        first_stage = Retriever(kb, embedder, RetrieveSettings(top_k=4)).search(query).hits
        weight0 = settings.model_copy(update={"rerank_weight": 0.0})
        kept = Retriever(kb, embedder, weight0).search(query).hits
        assert [h.chunk.chunk_id for h in kept] == [h.chunk.chunk_id for h in first_stage], "weight 0: first stage"
        assert all(h.rerank is not None and 0 < h.rerank < 1 for h in kept), "its probabilities still kept"
        # A top_k deeper than rerank_candidates (an evaluation's top 100) reranks only those: the rest
        # follow in the first stage's order, unscored, instead of costing a cross-encoder pass each.
        deep = Retriever(kb, embedder, settings).search(query, top_k=9).hits
        assert [h.chunk.chunk_id for h in deep[:4]] == [h.chunk.chunk_id for h in hits]
        assert [h.rerank is not None for h in deep] == [True] * 6 + [False] * 3
        fused = Retriever(kb, embedder, RetrieveSettings(top_k=9)).search(query).hits
        assert [h.chunk.chunk_id for h in deep[6:]] == [h.chunk.chunk_id for h in fused[6:]]


def test_the_answer_gate_uses_the_rerankers_score_only_when_asked_or_calibrated(
    sample_kb_dir, embedder, tiny_cross_encoder
) -> None:
    query = "How long is the battery module under warranty?"
    rerank = {"rerank_model": str(tiny_cross_encoder), "rerank_candidates": 6, "top_k": 4}
    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:

        def relevant(**gate) -> list[int]:
            found = Retriever(kb, embedder, RetrieveSettings(**rerank, **gate)).search(query)
            return [h.chunk.chunk_id for h in found.relevant]

        by_relevance = relevant(answer_gate="relevance")
        assert by_relevance and relevant() == by_relevance, "auto: an uncalibrated reranker does not gate"
        with pytest.raises(RerankerError, match="rag tune reranker"):
            relevant(answer_gate="reranker")
        assert relevant(answer_gate="reranker", answer_threshold=2.0) == [], "no score reaches it: not found"
        assert len(relevant(answer_gate="reranker", answer_threshold=-1.0)) == 4
        assert relevant(answer_gate="both", answer_threshold=-1.0) == by_relevance


def test_langchain_retriever_returns_documents_with_citation_metadata(sample_kb_dir, embedder) -> None:
    from rag.langchain_retriever import KnowledgeBaseRetriever

    with LocalStore.open(sample_kb_dir / "kb" / "sample") as kb:
        lc = KnowledgeBaseRetriever(retriever=Retriever(kb, embedder, RetrieveSettings()), top_k=3)
        docs = lc.invoke("How long is the battery module under warranty?")
        assert len(docs) == 3
        top = docs[0]
        assert top.metadata["source"].endswith("helios-h10-warranty.pdf") and top.metadata["page"] == 2
        assert "ten years" in top.page_content and top.metadata["chunk_id"] > 0


def _random_base(root: Path, embedder, kind: str, docs: int = 400, per_doc: int = 5) -> LocalStore:
    """`docs` documents of random unit vectors under the real embedder's name, as `kind`."""

    rng = np.random.default_rng(3)
    kb = LocalStore.create(root, embedder.identity)
    with kb.writer(kind) as writer:
        for d in range(docs):
            vecs = rng.standard_normal((per_doc, embedder.identity.dimension)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            chunks = [Chunk(f"doc {d} part {i}", f"/docs/{d}.txt", None, i, 0, 1, {}) for i in range(per_doc)]
            writer.put_document(path=f"/docs/{d}.txt", status="ok", chunks=chunks, vectors=vecs)
        writer.commit()
    return kb


def test_an_hnsw_base_ranks_as_the_flat_one_and_filters_exactly(tmp_path: Path, embedder) -> None:
    flat = _random_base(tmp_path / "flat", embedder, "flat")
    hnsw = _random_base(tmp_path / "hnsw", embedder, "hnsw")
    queries = np.random.default_rng(4).standard_normal((10, embedder.identity.dimension)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    def ranking(kb: LocalStore, q: np.ndarray, filters: Filters | None = None, **settings) -> list[int]:
        retriever = Retriever(kb, embedder, RetrieveSettings(**settings))
        hits = retriever.search("q", mode="dense", top_k=10, query_vector=q, filters=filters).hits
        return [h.chunk.chunk_id for h in hits]

    # Searched as broadly as the base is large (retrieve.hnsw_ef_search, given to the store when it
    # opens), the graph finds exactly what the flat index does.
    hnsw.ef_search = 2000
    for q in queries:
        assert ranking(hnsw, q) == ranking(flat, q)
    # Few allowed documents: a filtered walk of the graph meets few of them, so they are scored
    # one by one, and the answer is the flat index's.
    few = Filters(doc_ids=[5, 50, 250])
    for q in queries:
        assert ranking(hnsw, q, few) == ranking(flat, q, few)
        assert len(ranking(hnsw, q, few)) == 10
    # Removed documents stay in the graph, labelled dead; a search never spends a place on them.
    for kb in (flat, hnsw):
        with kb.writer() as writer:
            writer.remove_documents(list(range(1, 41)))
            writer.commit()
    assert dead_count(hnsw.dense_index()) == 200
    for q in queries:  # 10 candidates, so a dead vector among them would leave a hole
        assert ranking(hnsw, q, candidates=10) == ranking(flat, q, candidates=10)
    flat.close()
    hnsw.close()


def test_one_pdf_page_cannot_fill_the_top_k_but_a_sheet_can(tmp_path: Path, embedder) -> None:
    """A long page about pump P7 becomes several chunks that all match; with max_per_page = 1 the
    other pages about it get their places.  A spreadsheet's sheet is not a page to spread over."""
    from tests.fixtures.documents import write_pdf, write_xlsx

    service = [f"Pump P7 service log entry {i}: the pump P7 seal was checked and the pump P7 ran." for i in range(36)]
    write_pdf(
        tmp_path / "docs" / "pumps.pdf",
        [service, ["Pump P7 is painted blue and stands in hall 3."], ["The canteen opens at noon."]],
    )
    write_xlsx(
        tmp_path / "docs" / "log.xlsx", {"P7": [["entry", "note"]] + [[i, line] for i, line in enumerate(service)]}
    )
    settings = qa_settings(tmp_path / "data", chunk={"size": 64, "overlap": 0})
    with open_for_ingest(settings, "pumps", embedder) as kb:
        IngestPipeline(settings, embedder, kb).run([tmp_path / "docs"])
    question = "What do the pump P7 service log entries say about the seal?"
    with LocalStore.open(settings.kb_dir("pumps")) as kb:
        pdf = Filters(path_glob="pumps.pdf")
        unlimited = Retriever(kb, embedder, RetrieveSettings(max_per_page=None)).search(question, top_k=3, filters=pdf)
        assert [h.chunk.page_no for h in unlimited.hits] == [1, 1, 1], "the long page fills the top 3 on its own"
        spread = Retriever(kb, embedder, RetrieveSettings()).search(question, top_k=3, filters=pdf)
        assert sorted(h.chunk.page_no for h in spread.hits) == [1, 2, 3]
        assert spread.hits[0].chunk.page_no == 1, "the best passage stays first"
        sheet = Filters(path_glob="log.xlsx")
        rows = Retriever(kb, embedder, RetrieveSettings()).search(question, top_k=3, filters=sheet)
        assert len(rows.hits) == 3 and {h.chunk.page_no for h in rows.hits} == {1}


def test_a_title_that_stands_for_its_page_gives_its_place_to_the_chunk_that_repeats_it() -> None:
    from rag.retrieve import Hit, _spread_over_pages
    from rag.types import Chunk

    title = "Consolidated Statement of Income\nYears ended December 31"
    rows = f"{title}\n\n| (Millions) | 2022 |\n| --- | --- |\n| Net sales | $34,229 |"

    def hit(text: str, page: int, score: float, **meta) -> Hit:
        return Hit(Chunk(text, "10k.pdf", page, 0, 0, len(text), meta), score, similarity=score / 4, coverage=0.5)

    hits = [hit(title, 48, 2.0), hit("Notes to the statements", 52, 1.5), hit(rows, 48, 1.2, repeated_header=55)]
    spread = _spread_over_pages(hits, 1)
    assert [(h.chunk.page_no, h.score) for h in spread] == [(48, 2.0), (52, 1.5)], "the title's rank is kept"
    assert spread[0].chunk.text == rows and spread[0].similarity == 0.5, "with the rows the title names"
    other = hit("| (Millions) | 2021 |\n| --- | --- |\n| Cost of sales | 19,232 |", 48, 1.1, repeated_header=30)
    assert _spread_over_pages([hits[0], other], 1)[0].chunk.text == title, "a chunk that does not repeat it stays out"
