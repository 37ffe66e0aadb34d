"""The local store's own guarantees, beyond the contract every store meets (test_contract.py):
SQLite + FAISS + bm25s in one folder, atomic generations, HNSW by setting, the data directory."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from rag.config import InvalidKBName
from rag.embed import EmbedderIdentity
from rag.store import KBError, KBLocked, delete_base, list_bases
from rag.store.bm25 import WINDOW as BM25_WINDOW
from rag.store.bm25 import windows
from rag.store.local import LocalStore
from rag.store.local import exists as local_exists
from rag.types import Chunk
from tests.fixtures.kb_checks import assert_consistent

IDENTITY = EmbedderIdentity("test-model", 4, True)


def chunk(text: str, ordinal: int, page: int | None = None) -> Chunk:
    return Chunk(text, "x", page, ordinal, 0, len(text), {"k": "v"})


def vectors(n: int) -> np.ndarray:
    v = np.random.default_rng(n).random((n, 4), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def data(tmp_path: Path):
    """Settings whose data directory is `tmp_path`."""
    from rag.config import load_settings

    return load_settings(data_dir=tmp_path)


def test_a_half_created_base_does_not_count_as_existing(tmp_path: Path) -> None:
    root = tmp_path / "kb" / "docs"
    root.mkdir(parents=True)
    sqlite3.connect(root / "kb.sqlite").close()  # what a kill during creation can leave
    assert not local_exists(root)
    assert list_bases(data(tmp_path)) == []
    LocalStore.create(root, IDENTITY).close()
    assert local_exists(root)
    assert list_bases(data(tmp_path)) == ["docs"]


def test_create_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer() as w:
        w.put_document(path="/a.txt", status="ok", chunks=[chunk("alpha", 0)], vectors=vectors(1))
        w.commit()
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb:
        assert kb.chunk_count() == 1 and kb.generation == 1


def test_chunks_come_back_with_path_page_span_and_metadata(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer() as w:
        w.put_document(
            path="/docs/a.pdf",
            status="ok",
            pages=2,
            chunks=[chunk("first page", 0, 1), chunk("second page", 1, 2)],
            vectors=vectors(2),
        )
        w.commit()
        got = sorted(kb.chunks([1, 2, 999]).values(), key=lambda c: c.ordinal)
        assert [(c.source, c.page_no, c.text, c.metadata) for c in got] == [
            ("/docs/a.pdf", 1, "first page", {"k": "v"}),
            ("/docs/a.pdf", 2, "second page", {"k": "v"}),
        ]
        assert_consistent(kb)


def test_rollback_discards_staged_changes_and_the_index_matches_again(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer() as w:
        w.put_document(path="/a", status="ok", chunks=[chunk("a", 0)], vectors=vectors(1))
        w.commit()
        w.put_document(path="/b", status="ok", chunks=[chunk("b", 0)], vectors=vectors(1))
        w.rollback()
        assert w.index.ntotal == 1 and kb.chunk_count() == 1
        assert_consistent(kb)


def test_chunk_ids_are_never_reused(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer() as w:
        w.put_document(path="/a", status="ok", chunks=[chunk("a", 0)], vectors=vectors(1))
        w.commit()
        w.put_document(path="/a", status="ok", chunks=[chunk("a2", 0)], vectors=vectors(1))
        w.commit()
        assert list(kb.chunks([1, 2])) == [2]


def test_vector_count_must_match_chunks(tmp_path: Path) -> None:
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer() as w, pytest.raises(ValueError):
        w.put_document(path="/a", status="ok", chunks=[chunk("a", 0)], vectors=vectors(2))


def test_a_newer_schema_is_refused_with_a_reason(tmp_path: Path) -> None:
    LocalStore.create(tmp_path / "kb", IDENTITY).close()
    conn = sqlite3.connect(tmp_path / "kb" / "kb.sqlite")
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (json.dumps(99),))
    conn.commit()
    conn.close()
    with pytest.raises(KBError, match="schema 99"):
        LocalStore.open(tmp_path / "kb")


def test_delete_base_refuses_while_written(tmp_path: Path) -> None:
    root = tmp_path / "kb" / "docs"
    with LocalStore.create(root, IDENTITY) as kb, kb.writer(), pytest.raises(KBLocked):
        delete_base(data(tmp_path), "docs")
    delete_base(data(tmp_path), "docs")
    assert not root.exists() and (tmp_path / "kb").is_dir()


@pytest.mark.parametrize("name", [".", "..", "../docs", "/tmp", "a/b", "x" * 65, "", ".hidden"])
def test_delete_base_takes_only_a_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidKBName, match="letters, digits"):
        delete_base(data(tmp_path / "data"), name)


def test_delete_base_removes_only_a_knowledge_base_and_never_follows_a_link(tmp_path: Path) -> None:
    from rag.config import load_settings

    data = tmp_path / "data"
    (data / "kb" / "notes").mkdir(parents=True)
    (data / "kb" / "notes" / "mine.txt").write_text("not rag's")  # a folder that is not a base
    real = tmp_path / "elsewhere"
    LocalStore.create(real, IDENTITY).close()  # a real base, outside the data directory
    (data / "kb" / "linked").symlink_to(real)
    with pytest.raises(KBError, match="no knowledge base named 'notes'"):
        delete_base(load_settings(data_dir=data), "notes")
    with pytest.raises(KBError, match="symbolic link"):
        delete_base(load_settings(data_dir=data), "linked")
    assert (data / "kb" / "notes" / "mine.txt").is_file() and (real / "kb.sqlite").is_file()


def test_the_write_lock_of_a_base_deleted_meanwhile_is_a_sentence(tmp_path: Path) -> None:
    root = tmp_path / "kb" / "docs"
    kb = LocalStore.create(root, IDENTITY)
    delete_base(data(tmp_path), "docs")  # by another process, between opening and writing
    with pytest.raises(KBError, match="was deleted while this command was starting"):
        kb.writer()
    kb.close()


def test_a_busy_base_names_the_process_writing_it(tmp_path: Path) -> None:
    busy = rf"another process \(pid {os.getpid()}\); try again"
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer(), pytest.raises(KBLocked, match=busy):
        kb.writer()


def test_bm25_windows_join_each_chunk_with_its_neighbours_in_the_same_document() -> None:
    rows = [(1, 7, "a"), (2, 7, "b c"), (3, 7, "d"), (4, 7, "e"), (5, 9, "x"), (6, 9, "")]
    assert windows(rows, 1) == [["a", "b", "c"], ["a", "b", "c", "d"], ["b", "c", "d", "e"], ["d", "e"], ["x"], ["x"]]
    assert windows(rows, 0) == [["a"], ["b", "c"], ["d"], ["e"], ["x"], []]


def _bm25_top(kb: LocalStore, word: str) -> list[int]:
    return [cid for cid, _ in kb.lexical_candidates(word, 10)]


def test_a_chunk_is_found_by_a_word_in_its_neighbour_and_an_old_index_is_upgraded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'warranty' is in the first chunk only; with windows the second (same document) is found
    through it, the other document's chunk is not.  A base indexed chunk by chunk (as before
    BM25_WINDOW) is re-indexed by the next writer's commit even when nothing else changed."""
    texts = ["Warranty terms.", "The battery is covered for ten years.", "Cleaning the panels."]
    monkeypatch.setattr("rag.store.bm25.WINDOW", 0)  # build the base as an older version did
    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb, kb.writer() as w:
        w.put_document(path="/w.txt", status="ok", chunks=[chunk(texts[0], 0), chunk(texts[1], 1)], vectors=vectors(2))
        w.put_document(path="/c.txt", status="ok", chunks=[chunk(texts[2], 0)], vectors=vectors(1))
        w.commit()
        assert _bm25_top(kb, "warranty") == [1]
    monkeypatch.undo()
    with LocalStore.open(tmp_path / "kb") as kb, kb.writer() as w:
        assert w.reindex
        assert w.commit() == 2 and kb.meta()["bm25_window"] == BM25_WINDOW
        assert sorted(_bm25_top(kb, "warranty")) == [1, 2]
        assert_consistent(kb)
    with LocalStore.open(tmp_path / "kb") as kb, kb.writer() as w:
        assert w.commit() == 2, "an up-to-date base with nothing staged is not rewritten"


def _stored_vectors(kb: LocalStore) -> dict[int, np.ndarray]:
    import faiss

    from rag.store.dense import DEAD

    index = kb.dense_index()
    ids = faiss.vector_to_array(index.id_map)
    return {int(i): index.reconstruct(int(i)) for i in ids if i != DEAD}


def test_an_hnsw_base_removes_by_label_then_compacts_and_keeps_every_other_vector(tmp_path: Path) -> None:
    # HNSW cannot delete from its graph: a removed chunk's vector is relabelled dead (no rebuild,
    # never returned), and the graph is rebuilt once a fifth of it is dead.
    from rag.store.dense import dead_count
    from rag.store.dense import kind_of as dense_kind

    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb:
        with kb.writer("hnsw") as w:
            for name, n in [("/a", 1), ("/b", 2), ("/c", 7)]:
                chunks = [chunk(f"{name} {i}", i) for i in range(n)]
                w.put_document(path=name, status="ok", chunks=chunks, vectors=vectors(n))
            w.commit()
        before = _stored_vectors(kb)
        assert dense_kind(kb.dense_index()) == "hnsw" and kb.meta()["dense_index"] == "hnsw"
        a = kb.document_by_path("/a")
        [gone] = kb.document_chunk_ids(a.doc_id)
        with kb.writer() as w:  # no kind asked: the base keeps its own
            w.remove_documents([a.doc_id])
            w.commit()
        index = kb.dense_index()
        assert (index.ntotal, dead_count(index)) == (10, 1), "one dead vector of ten: no rebuild"
        assert_consistent(kb)
        _, found = index.search(before[gone][None, :], 10)
        assert gone not in found[0]
        with kb.writer() as w:
            w.remove_documents([kb.document_by_path("/b").doc_id])
            w.commit()
        index = kb.dense_index()
        assert (index.ntotal, dead_count(index)) == (7, 0), "three dead of ten: rebuilt without them"
        assert_consistent(kb)
        after = _stored_vectors(kb)
        assert len(after) == 7 and all(np.array_equal(after[i], before[i]) for i in after)


def test_a_base_changes_index_kind_only_when_asked_and_keeps_its_vectors(tmp_path: Path) -> None:
    from rag.store.dense import kind_of as dense_kind

    with LocalStore.create(tmp_path / "kb", IDENTITY) as kb:
        with kb.writer() as w:
            w.put_document(path="/a", status="ok", chunks=[chunk("a", 0), chunk("b", 1)], vectors=vectors(2))
            w.commit()
        flat = _stored_vectors(kb)
        assert dense_kind(kb.dense_index()) == "flat"
        with kb.writer("hnsw") as w:  # nothing else to do, yet the commit converts it
            assert w.commit() == 2
        assert dense_kind(kb.dense_index()) == "hnsw"
        converted = _stored_vectors(kb)
        assert converted.keys() == flat.keys() and all(np.array_equal(converted[i], flat[i]) for i in flat)
        with kb.writer() as w:
            assert w.commit() == 2, "a writer that is not asked leaves the kind alone (and commits nothing)"
        with kb.writer("flat") as w:
            w.commit()
        assert dense_kind(kb.dense_index()) == "flat" and _stored_vectors(kb).keys() == flat.keys()
        with pytest.raises(KBError, match="unknown dense index 'ivf'"):
            kb.writer("ivf")
        kb.writer().close()  # and the refusal left the base unlocked
