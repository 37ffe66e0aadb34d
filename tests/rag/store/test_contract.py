"""The definition of a store: every backend passes the same tests (local: SQLite + FAISS + bm25s;
milvus: the real Milvus Lite).  What only one backend promises is tested beside it
(test_local.py, test_milvus.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.config import load_settings
from rag.embed import EmbedderIdentity
from rag.store import (
    Filters,
    KBError,
    ModelMismatch,
    Store,
    base_stamp,
    create_store,
    delete_base,
    list_bases,
    open_store,
    store_exists,
)
from rag.types import Chunk

DIM = 8
IDENTITY = EmbedderIdentity("test-model", DIM, True)
BACKENDS = ["local", "milvus"]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    store = {"backend": request.param, "uri": str(tmp_path / "milvus.db")}
    yield load_settings(data_dir=tmp_path / "data", store=store)
    if request.param == "milvus":
        from rag.store.milvus import close_clients

        close_clients()


@pytest.fixture
def kb(settings) -> Iterator[Store]:
    store = create_store(settings, "t", IDENTITY)
    yield store
    store.close()


def unit(*seeds: int) -> np.ndarray:
    rows = [np.random.default_rng(s).standard_normal(DIM) for s in seeds]
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def chunks_of(path: str, texts: list[str], page: int | None = None) -> list[Chunk]:
    out, start = [], 0
    for i, text in enumerate(texts):
        out.append(Chunk(text, path, page, i, start, start + len(text), {"n": i}))
        start += len(text) + 1
    return out


def put(writer, path: str, texts: list[str], seeds: list[int], **extra) -> int:
    return writer.put_document(
        path=path,
        status="ok",
        sha256=extra.pop("sha256", path),
        chunker="c1",
        pages=1,
        chunks=chunks_of(path, texts, extra.pop("page", None)),
        vectors=unit(*seeds),
        **extra,
    )


def texts_of(kb: Store, path: str) -> list[str]:
    doc = kb.document_by_path(path)
    assert doc is not None
    ids = kb.document_chunk_ids(doc.doc_id)
    found = kb.chunks(ids)
    return [found[i].text for i in ids]


# ---- identity, version and the data directory ---------------------------------------------------
def test_a_new_base_records_its_model_and_starts_at_generation_zero(settings, kb: Store) -> None:
    meta = kb.meta()
    assert (meta["embed_model"], meta["embed_dim"], meta["embed_normalize"]) == ("test-model", DIM, True)
    assert kb.generation == 0 and kb.created_now and kb.chunk_count() == 0 and kb.documents() == []
    assert store_exists(settings, "t") and list_bases(settings) == ["t"] and base_stamp(settings, "t")
    kb.check_embedder("test-model", True, DIM)
    with pytest.raises(ModelMismatch, match="test-model"):
        kb.check_embedder("other-model", True)
    again = create_store(settings, "t", IDENTITY)
    assert not again.created_now, "creating an existing base opens it"
    again.close()


def test_open_missing_and_delete(settings) -> None:
    with pytest.raises(KBError, match="no knowledge base"):
        open_store(settings, "absent")
    assert not store_exists(settings, "absent") and base_stamp(settings, "absent") is None
    create_store(settings, "gone", IDENTITY).close()
    stamp = base_stamp(settings, "gone")
    delete_base(settings, "gone")
    assert not store_exists(settings, "gone") and list_bases(settings) == []
    create_store(settings, "gone", IDENTITY).close()
    assert base_stamp(settings, "gone") not in (None, stamp), "a base created again is a new one"


def test_each_commit_is_a_new_generation_and_nothing_to_commit_is_none(kb: Store) -> None:
    with kb.writer() as w:
        put(w, "/a.txt", ["alpha"], [1])
        assert w.commit() == 1
        assert w.commit() == 1, "nothing staged: no new generation"
        put(w, "/b.txt", ["beta"], [2])
        assert w.commit() == 2
    assert kb.generation == 2


# ---- documents and chunks ----------------------------------------------------------------------
def test_chunks_come_back_with_path_page_span_and_metadata(kb: Store) -> None:
    with kb.writer() as w:
        doc_id = put(w, "/docs/a.pdf", ["first passage", "second passage"], [1, 2], page=3, size=10, mtime=5.0)
        w.commit()
    (doc,) = kb.documents()
    assert (doc.doc_id, doc.path, doc.status, doc.chunks, doc.pages, doc.size, doc.mtime) == (
        doc_id,
        "/docs/a.pdf",
        "ok",
        2,
        1,
        10,
        5.0,
    )
    assert kb.document_by_path("/docs/a.pdf") == doc and kb.document_by_path("/nope") is None
    ids = kb.document_chunk_ids(doc_id)
    got = kb.chunks([*ids, 987654321])
    assert [(got[i].text, got[i].source, got[i].page_no, got[i].ordinal, got[i].metadata) for i in ids] == [
        ("first passage", "/docs/a.pdf", 3, 0, {"n": 0}),
        ("second passage", "/docs/a.pdf", 3, 1, {"n": 1}),
    ]
    assert [(got[i].char_start, got[i].char_end) for i in ids] == [(0, 13), (14, 28)]
    assert all(got[i].doc_id == doc_id and got[i].chunk_id == i for i in ids)
    assert kb.chunk_count() == 2 and sorted(kb.chunk_ids()) == sorted((i, doc_id) for i in ids)
    assert [c for c, _ in kb.chunk_ids(min_chars=14)] == [ids[1]]


def test_failed_and_empty_documents_are_recorded_with_their_reason(kb: Store) -> None:
    with kb.writer() as w:
        w.put_document(path="/bad.pdf", status="failed", error="not a readable PDF", size=3, chunker="c1")
        w.put_document(path="/scan.pdf", status="empty", error="no text layer", chunker="c1")
        w.commit()
    assert [(d.path, d.status, d.error, d.chunks) for d in kb.documents()] == [
        ("/bad.pdf", "failed", "not a readable PDF", 0),
        ("/scan.pdf", "empty", "no text layer", 0),
    ]
    assert [d.path for d in kb.documents("failed")] == ["/bad.pdf"] and kb.chunk_count() == 0


def test_replacing_a_document_replaces_its_chunks(kb: Store) -> None:
    with kb.writer() as w:
        put(w, "/a.txt", ["old one", "old two"], [1, 2], sha256="v1")
        w.commit()
        put(w, "/a.txt", ["new text"], [3], sha256="v2")
        w.commit()
    assert texts_of(kb, "/a.txt") == ["new text"] and kb.chunk_count() == 1 and len(kb.documents()) == 1
    assert kb.document_by_path("/a.txt").sha256 == "v2"


def test_touch_updates_what_identifies_a_file(kb: Store) -> None:
    with kb.writer() as w:
        doc_id = put(w, "/a.txt", ["text"], [1], size=4, mtime=1.0)
        w.commit()
        w.touch(doc_id, path="/a.txt", mtime=2.0, size=4)
        w.commit()
    doc = kb.document_by_path("/a.txt")
    assert (doc.mtime, doc.size, doc.chunks) == (2.0, 4, 1) and texts_of(kb, "/a.txt") == ["text"]


def test_removing_documents_removes_their_chunks_from_every_search(kb: Store) -> None:
    with kb.writer() as w:
        a = put(w, "/a.txt", ["warranty terms", "warranty length"], [1, 2])
        put(w, "/b.txt", ["cleaning the panels"], [3])
        w.commit()
        assert w.remove_documents([a]) == 2
        w.commit()
    assert [d.path for d in kb.documents()] == ["/b.txt"] and kb.chunk_count() == 1
    assert kb.lexical_candidates("warranty", 10) == []
    assert {cid for cid, _ in kb.dense_candidates(unit(1)[0], 10)} == set(
        kb.document_chunk_ids(kb.documents()[0].doc_id)
    )


def test_duplicates_share_content_and_inherit_it(kb: Store) -> None:
    with kb.writer() as w:
        first = put(w, "/one/manual.txt", ["the manual text"], [1], sha256="same")
        assert kb.twin("same", "c1", "/two/manual.txt") == first
        assert kb.twin("same", "c1", "/one/manual.txt") is None, "a file is not its own twin"
        assert kb.twin("same", "other-chunker", "/two/manual.txt") is None
        second = w.put_document(
            path="/two/manual.txt", status="duplicate", sha256="same", chunker="c1", content_of=first
        )
        w.commit()
        assert kb.chunk_count() == 1, "stored once"
        assert texts_of(kb, "/two/manual.txt") == ["the manual text"]
        w.remove_documents([first])
        w.commit()
    (heir,) = kb.documents()
    assert (heir.path, heir.status, heir.content_of, heir.chunks) == ("/two/manual.txt", "ok", None, 1)
    assert texts_of(kb, "/two/manual.txt") == ["the manual text"]
    assert [kb.chunks([c])[c].source for c, _ in kb.lexical_candidates("manual", 5)] == ["/two/manual.txt"]
    assert second in {d.doc_id for d in kb.documents()}


def test_stored_tokens_and_vectors_come_back(kb: Store) -> None:
    with kb.writer() as w:
        doc_id = put(w, "/a.txt", ["Warranties covered", "panels"], [1, 2])
        w.commit()
    ids = kb.document_chunk_ids(doc_id)
    assert kb.chunk_tokens(ids) == {ids[0]: ["warranti", "cover"], ids[1]: ["panel"]}
    assert np.allclose(kb.vectors([ids[1], ids[0]]), unit(2, 1), atol=1e-6)


# ---- search ------------------------------------------------------------------------------------
@pytest.fixture
def corpus(kb: Store) -> Store:
    with kb.writer() as w:
        put(w, "/en/warranty.txt", ["The warranty covers the battery for ten years.", "Claims need a receipt."], [1, 2])
        put(w, "/en/cleaning.md", ["Rinse the solar panels every spring."], [3])
        put(w, "/zh/说明.md", ["电池模块的保修期为十年。"], [4])
        w.commit()
    return kb


def ids_of(kb: Store, path: str) -> list[int]:
    return kb.document_chunk_ids(kb.document_by_path(path).doc_id)


def test_dense_candidates_are_the_nearest_by_cosine(corpus: Store) -> None:
    q = unit(3)[0]
    found = corpus.dense_candidates(q, 2)
    assert found[0] == (ids_of(corpus, "/en/cleaning.md")[0], pytest.approx(1.0, abs=1e-5))
    assert len(found) == 2 and found[0][1] >= found[1][1]
    every = corpus.dense_candidates(q, 10)
    assert len(every) == 4, "all chunks when k is larger than the base"


def test_lexical_candidates_stem_english_and_segment_chinese(corpus: Store) -> None:
    warranty = ids_of(corpus, "/en/warranty.txt")
    found = corpus.lexical_candidates("warranties", 10)
    # the first chunk says it, the second is found through its neighbour (BM25 windows)
    assert set(dict(found)) == set(warranty) and all(score > 0 for _, score in found)
    assert [cid for cid, _ in corpus.lexical_candidates("保修期", 10)] == ids_of(corpus, "/zh/说明.md")
    assert corpus.lexical_candidates("xylophone", 10) == [] and corpus.lexical_candidates("the of", 10) == []


def test_exact_scores_for_given_chunks(corpus: Store) -> None:
    q = unit(1)[0]
    ids = [*ids_of(corpus, "/en/warranty.txt"), *ids_of(corpus, "/en/cleaning.md")]
    dense = corpus.dense_scores(q, [*ids, 987654321])
    expected = unit(1, 2, 3) @ q
    assert [dense[i] for i in ids] == pytest.approx(list(expected), abs=1e-5) and dense[987654321] == 0.0
    lexical = corpus.lexical_scores("warranty receipt", ids)
    assert lexical[ids[2]] == 0.0 and lexical[ids[0]] > 0 and lexical[ids[1]] > 0
    ranked = [cid for cid, _ in corpus.lexical_candidates("warranty receipt", 10)]
    assert sorted(ids[:2], key=lambda i: -lexical[i]) == ranked, "one scale, the candidates' order"


def test_filters_by_path_glob_and_document_ids(corpus: Store) -> None:
    q = unit(3)[0]
    md = corpus.allowed(Filters(path_glob="*.md"))
    assert {cid for cid, _ in corpus.dense_candidates(q, 10, md)} == {
        *ids_of(corpus, "/en/cleaning.md"),
        *ids_of(corpus, "/zh/说明.md"),
    }
    assert corpus.lexical_candidates("warranty", 10, md) == []
    one = corpus.allowed(Filters(doc_ids=[corpus.document_by_path("/en/warranty.txt").doc_id]))
    assert {cid for cid, _ in corpus.dense_candidates(q, 10, one)} == set(ids_of(corpus, "/en/warranty.txt"))
    none = corpus.allowed(Filters(path_glob="*.pdf"))
    assert (
        none.empty and corpus.dense_candidates(q, 10, none) == [] and corpus.lexical_candidates("the", 10, none) == []
    )


def test_a_second_reader_sees_each_commit(settings, kb: Store) -> None:
    reader = open_store(settings, "t")
    with kb.writer() as w:
        put(w, "/a.txt", ["first document"], [1])
        w.commit()
        assert reader.generation == 1 and [d.path for d in reader.documents()] == ["/a.txt"]
        assert [c for c, _ in reader.lexical_candidates("document", 5)] == ids_of(kb, "/a.txt")
        put(w, "/b.txt", ["second document"], [2])
        w.commit()
    assert reader.generation == 2 and len(reader.lexical_candidates("document", 5)) == 2
    assert len(reader.dense_candidates(unit(2)[0], 5)) == 2
    reader.close()
