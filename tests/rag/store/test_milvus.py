"""The Milvus store beyond the contract, with the real Milvus Lite and real processes: the same
answers as the local store, failures that say what to do, kill -9, two processes sharing one base
through `milvus-lite server`, and `rag kb copy` both ways."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import load_settings
from rag.embed import EmbedderIdentity
from rag.store import create_store, open_store
from rag.store.milvus import close_clients, doc_id_for
from tests.conftest import REPO, SAMPLES
from tests.fixtures.kb_checks import assert_store_consistent, content
from tests.fixtures.openai_server import free_port
from tests.hostile.conftest import rag
from tests.ingest.test_crash import kill_when, make_corpus
from tests.rag.store.test_local import IDENTITY, chunk, vectors

pytestmark = pytest.mark.slow
MILVUS_LITE = Path(sys.executable).parent / "milvus-lite"


def milvus(uri: str) -> dict[str, str]:
    return {"RAG_STORE__BACKEND": "milvus", "RAG_STORE__URI": uri}


@pytest.fixture(autouse=True)
def _closed() -> Iterator[None]:
    """Each test's Lite files are free for the processes it starts, and closed after it."""
    close_clients()
    yield
    close_clients()


def answers(run) -> list[tuple[str, int | None, str]]:
    """(file, page, text) of what `rag ask --json` retrieved, best first."""
    return [(Path(h["source"]).name, h["page"], h["text"]) for h in json.loads(run.out)["retrieved"]]


QUESTIONS = [
    ("How long is the battery module covered by the warranty?", "hybrid"),
    ("What is the capital of France?", "hybrid"),
    ("海川 H10 的逆变器保修期是几年？", "bm25"),
    ("保修期", "hybrid"),
    ("inverter warranty years", "dense"),
    ("cleaning the panels", "bm25"),
]


def retrieved(
    data: Path, name: str, embedder, feedback: int = 0, **store: str
) -> list[list[tuple[str, int | None, str, bool]]]:
    """What each of QUESTIONS retrieves from base `name` (in-process, the retriever `rag ask` uses):
    (file, page, text, passed the gate) per hit, best first.  `feedback`: retrieve.feedback_passages."""
    from rag.retrieve import Retriever

    settings = load_settings(
        data_dir=data, store=store or {"backend": "local"}, retrieve={"feedback_passages": feedback}
    )
    with open_store(settings, name) as kb:
        retriever = Retriever(kb, embedder, settings.retrieve)
        results = [retriever.search(q, mode=mode) for q, mode in QUESTIONS]
    close_clients()
    return [
        [(Path(h.chunk.source).name, h.chunk.page_no, h.chunk.text, h in r.relevant) for h in r.hits] for r in results
    ]


LITE = {"backend": "milvus", "uri": "./kb.db"}


def test_the_samples_on_milvus_answer_like_the_local_store(tmp_path: Path, embedder) -> None:
    data = tmp_path / "data"
    on = milvus("./kb.db")
    assert rag("ingest", str(SAMPLES), "--kb", "sample", data=data).code == 0
    assert rag("ingest", str(SAMPLES), "--kb", "sample", data=data, **on).code == 0
    question = QUESTIONS[0][0]
    local = rag("ask", question, "--kb", "sample", "--json", data=data, RAG_LLM__MAX_NEW_TOKENS="32")
    remote = rag("ask", question, "--kb", "sample", "--json", data=data, RAG_LLM__MAX_NEW_TOKENS="32", **on)
    assert local.code == remote.code == 0, remote.text
    assert answers(remote) == answers(local)
    shown = [json.loads(r.out) for r in (local, remote)]
    assert shown[0]["answer"] == shown[1]["answer"] and "ten years" in shown[0]["answer"]
    cited = [[(Path(c["source"]).name, c["page"]) for c in s["citations"]] for s in shown]
    assert cited[0] == cited[1] == [("helios-h10-warranty.pdf", 2)]
    assert retrieved(data, "sample", embedder, **LITE) == retrieved(data, "sample", embedder)
    with_feedback = retrieved(data, "sample", embedder, feedback=3)  # reads the stored vectors back
    assert retrieved(data, "sample", embedder, feedback=3, **LITE) == with_feedback
    again = rag("ingest", str(SAMPLES), "--kb", "sample", data=data, **on)
    assert again.code == 0 and "nothing new" in again.out, "content-hash skips, as locally"
    show = rag("kb", "show", "sample", data=data, **on)
    assert show.code == 0 and "Milvus" in show.out and "helios-h10-warranty.pdf" in show.out


def test_an_unreachable_server_is_one_line_with_its_own_exit_code(tmp_path: Path) -> None:
    run = rag("kb", "list", data=tmp_path / "data", **milvus(f"http://127.0.0.1:{free_port()}"))
    assert run.code == 69 and "cannot reach Milvus at http://127.0.0.1:" in run.err, run.text
    assert "Traceback" not in run.text and len(run.err.strip().splitlines()) <= 2


def test_a_lite_file_open_in_another_process_says_how_to_share_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = load_settings(data_dir=data, store={"backend": "milvus", "uri": "./kb.db"})
    create_store(holder, "busy", EmbedderIdentity("sentence-transformers/all-MiniLM-L6-v2", 384, True)).close()
    run = rag("kb", "list", data=data, **milvus("./kb.db"))  # while this process holds the file
    assert run.code == 69 and "is open in another process" in run.err and "milvus-lite server" in run.err, run.text
    assert len(run.err.strip().splitlines()) == 1, "one line, not broken inside the command it suggests"


def test_a_base_built_with_another_model_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    other = load_settings(data_dir=data, store={"backend": "milvus", "uri": "./kb.db"})
    create_store(other, "manuals", EmbedderIdentity("intfloat/e5-small-v2", 384, True)).close()
    close_clients()
    run = rag("ingest", str(SAMPLES), "--kb", "manuals", data=data, **milvus("./kb.db"))
    assert run.code == 2 and "was built with embedding model 'intfloat/e5-small-v2'" in run.err, run.text


def test_chunks_a_killed_writer_left_without_their_catalog_row_are_never_counted_and_then_deleted(
    tmp_path: Path,
) -> None:
    """Lite logs each collection on its own, so a kill can keep a document's chunks and lose its
    catalog row (seen on CI).  Readers must not count them; the next writer deletes them."""
    settings = load_settings(data_dir=tmp_path / "data", store={"backend": "milvus", "uri": "./kb.db"})

    with create_store(settings, "t", IDENTITY) as kb:
        writer = kb.writer()  # never closed: the process dies holding it
        writer.put_document(
            path="/a.txt", status="ok", chunks=[chunk("alpha", 0), chunk("beta", 1)], vectors=vectors(2)
        )
        lost = [chunk("gamma", 0), chunk("delta", 1), chunk("epsilon", 2)]
        writer._upsert_chunks(doc_id_for("/lost.txt"), "sha", "c", lost, vectors(3), ["gamma", "delta", "epsilon"])
        writer.commit()
        assert _rows(kb) == 5
        assert kb.chunk_count() == 2 and {d for _, d in kb.chunk_ids()} == {doc_id_for("/a.txt")}
        assert_store_consistent(kb)
    close_clients()
    with open_store(settings, "t") as kb:
        with kb.writer():
            assert _rows(kb) == 2, "the next writer deletes chunks of no document"
        with kb.writer():  # and a writer that closed leaves nothing to look for
            pass
        assert kb.chunk_count() == 2 and kb.meta()["writer_open"] is False


def test_rows_lite_stores_twice_after_a_kill_in_a_flush_are_shown_once_and_then_rewritten_once(
    tmp_path: Path,
) -> None:
    """Milvus Lite 3.2.2 flushes in steps: segment, manifest, then the log is deleted.  A kill
    between the last two leaves the log, and the next open replays it over the segment, so every
    flushed row comes back twice (seen on CI as a document with each chunk twice).  This writes
    that state exactly: the logs as they were before a commit's flush, put back after it."""
    data = tmp_path / "data"
    settings = load_settings(data_dir=data, store={"backend": "milvus", "uri": "./kb.db"})
    with create_store(settings, "t", IDENTITY) as kb:
        writer = kb.writer()  # never closed: the process dies in its commit
        writer.put_document(
            path="/a.txt", status="ok", chunks=[chunk("alpha", 0), chunk("beta", 1)], vectors=vectors(2)
        )
        logs = {f: f.read_bytes() for f in (data / "kb.db" / "collections").rglob("wal/*") if f.is_file()}
        assert {f.parent.parent.name for f in logs} == {kb.chunks_coll, kb.docs_coll}
        writer.commit()
        assert not any(f.exists() for f in logs), "a flush deletes its log"
    close_clients()
    for f, body in logs.items():
        f.write_bytes(body)

    with open_store(settings, "t") as kb:
        assert _rows(kb) == 4, "Lite replays the log over the segment it was flushed to"
        assert [d.path for d in kb.documents()] == ["/a.txt"]
        assert_store_consistent(kb)
        assert len(kb.chunk_ids()) == 2
        hits = [cid for cid, _ in kb.dense_candidates(vectors(1)[0], 10)]
        assert len(hits) == len(set(hits)) == 2, "a search shows each passage once"
        with kb.writer():
            assert _rows(kb) == 2, "the next writer rewrites each doubled row once"
            raw = kb._query_all(kb.docs_coll, "doc_id >= 0", ["doc_id"], unique=False)
            assert len(raw) == 1, "and the doubled catalog row"
        assert_store_consistent(kb)
        assert [d.path for d in kb.documents()] == ["/a.txt"] and kb.chunk_count() == 2


def test_kill_9_during_an_ingest_into_milvus_then_a_rerun_converges(tmp_path: Path) -> None:
    docs = make_corpus(tmp_path / "docs")
    data = tmp_path / "data"
    env = {**os.environ, "RAG_DATA_DIR": str(data), "PYTHONPATH": str(REPO), "RAG_INGEST__COMMIT_INTERVAL_S": "0"}
    env |= milvus("./kb.db")
    cmd = [sys.executable, "-m", "rag", "ingest", str(docs), "--kb", "crash"]
    settings = load_settings(data_dir=data, store={"backend": "milvus", "uri": "./kb.db"})
    killed = 0
    for grown in (20_000, 60_000, 100_000):  # killed once the Lite files grew this much: mid-write
        before = _size(data / "kb.db")
        killed += kill_when(cmd, env, lambda: _size(data / "kb.db") > before + grown)  # noqa: B023
        with open_store(settings, "crash") as kb:
            assert_store_consistent(kb)  # what a reader sees after a kill is whole documents only
        close_clients()
    assert killed >= 2, "the ingest finished before it could be killed"
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    local = load_settings(data_dir=data)
    assert rag("ingest", str(docs), "--kb", "clean", data=data).code == 0
    with open_store(settings, "crash") as kb, open_store(local, "clean") as clean:
        assert_store_consistent(kb)
        assert _rows(kb) == kb.chunk_count(), "the rerun deleted whatever the kills left behind"
        assert content(kb) == content(clean), "exactly what one uninterrupted (local) ingest holds"


def _rows(kb) -> int:
    """Every stored chunk row, whoever owns it (what no reader is shown, so only a test asks)."""
    return int(kb._do("query", kb.chunks_coll, filter="", output_fields=["count(*)"])[0]["count(*)"])


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"milvus-lite server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    pytest.fail("milvus-lite server did not listen")


@pytest.fixture
def lite_server(tmp_path: Path) -> Iterator[str]:
    """`milvus-lite server` on loopback (never 0.0.0.0: it has no authentication)."""
    port = free_port()
    cmd = [
        str(MILVUS_LITE),
        "server",
        "--data-dir",
        str(tmp_path / "shared.db"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


ASK = """
import json, sys, time
from rag.config import load_settings
from rag.embed import Embedder
from rag.retrieve import Retriever
from rag.store import KBError, open_store, store_exists
settings = load_settings()
embedder = Embedder(settings.embed)
asked = found = 0
while time.monotonic() < float(sys.argv[1]):
    if not store_exists(settings, "shared"):
        time.sleep(0.2)
        continue
    with open_store(settings, "shared") as kb:
        hits = Retriever(kb, embedder, settings.retrieve).search("pump service months", mode="bm25").hits
    asked += 1
    found = max(found, len(hits))
    for h in hits:  # every hit is a whole document's chunk, with its file
        assert h.chunk.source.endswith(".txt") or h.chunk.source.endswith(".pdf"), h
print(json.dumps({"asked": asked, "found": found}))
"""


def test_two_processes_share_one_base_through_milvus_lite_server(tmp_path: Path, lite_server: str) -> None:
    docs = make_corpus(tmp_path / "docs")
    env = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(REPO), **milvus(lite_server)}
    env["RAG_INGEST__COMMIT_INTERVAL_S"] = "0"
    ingest = subprocess.Popen(
        [sys.executable, "-m", "rag", "ingest", str(docs), "--kb", "shared"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    asker = subprocess.run(
        [sys.executable, "-c", ASK, str(time.monotonic() + 60)], env=env, capture_output=True, text=True, timeout=300
    )
    _, err = ingest.communicate(timeout=300)
    assert ingest.returncode == 0, err[-2000:]
    assert asker.returncode == 0, asker.stderr[-2000:]
    seen = json.loads(asker.stdout)
    assert seen["asked"] > 10 and seen["found"] > 0, seen
    final = rag(
        "ask",
        "pump service months",
        "--kb",
        "shared",
        "--json",
        "--mode",
        "bm25",
        data=tmp_path / "data",
        **milvus(lite_server),
    )
    assert final.code == 0 and len(json.loads(final.out)["retrieved"]) == 5


def test_kb_copy_both_ways_gives_identical_search_results(tmp_path: Path, embedder) -> None:
    data = tmp_path / "data"
    assert rag("ingest", str(SAMPLES), "--kb", "orig", data=data).code == 0
    up = rag("kb", "copy", "orig", "up", "--to-store", "milvus", data=data, RAG_STORE__URI="./kb.db")
    assert up.code == 0 and "copied 5 document(s)" in up.out, up.text
    down = rag("kb", "copy", "up", "down", "--to-store", "local", data=data, **milvus("./kb.db"))
    assert down.code == 0, down.text
    expected = retrieved(data, "orig", embedder)
    assert retrieved(data, "up", embedder, **LITE) == expected
    assert retrieved(data, "down", embedder) == expected
    taken = rag("kb", "copy", "orig", "down", "--to-store", "local", data=data)
    assert taken.code == 2 and "already exists" in taken.err
