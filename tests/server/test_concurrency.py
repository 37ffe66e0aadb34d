"""20 clients search and ask at once while an upload is ingested into the same knowledge base:
no request fails, and every passage any of them is shown is one the base really holds (nothing
from a half-written generation, nothing that vanishes).  The ingest must overlap the queries:
some of them see the base before the new document and some after."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest

from rag.store import open_store
from tests.server.conftest import copy_of_samples, follow_job, running, server_settings

pytestmark = pytest.mark.slow

CLIENTS = 20
WARRANTY = "How long is the battery module covered by the warranty?"
OFF_TOPIC = "What is the capital of France?"
NEW_DOCUMENT = (
    "# Flux module\n\nThe flux capacitor of the Helios H10 needs 1.21 gigawatts to start. "
    "Its flux coils are replaced every 88 months by a certified technician.\n"
)
QUERY = "flux capacitor gigawatts coils"


@dataclass
class Seen:
    errors: list[str] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)
    passages: list[tuple[int, str]] = field(default_factory=list)  # (document id, text) of every hit and citation
    saw_new: list[bool] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(sample_kb_dir, tmp_path_factory, embedder, short_chat_model):
    data = copy_of_samples(sample_kb_dir, tmp_path_factory.mktemp("concurrency"))
    settings = server_settings(data, rate_limit_per_minute=0, queue_wait_s=300)
    with running(settings, embedder, short_chat_model) as srv:
        yield srv


def client(server, n: int, ingesting: threading.Event, seen: Seen) -> None:
    """Ask once (a question some of them answer, the others "not found"), then search until the
    ingest is over, and once more after."""
    question = WARRANTY if n % 4 == 0 else OFF_TOPIC
    deadline = time.monotonic() + 240
    with server.client() as http:
        reply = http.post(
            "/v1/chat/completions", json={"model": "sample", "messages": [{"role": "user", "content": question}]}
        )
        if reply.status_code != 200 or reply.json()["choices"][0]["message"]["rag"]["error"]:
            seen.errors.append(f"ask {reply.status_code}: {reply.text[:300]}")
        else:
            rag = reply.json()["choices"][0]["message"]["rag"]
            seen.passages += [(c["document_id"], c["text"]) for c in rag["citations"]]
        while time.monotonic() < deadline:
            last_round = not ingesting.is_set()
            found = http.post("/v1/kbs/sample/search", json={"query": QUERY, "top_k": 3})
            if found.status_code == 200:
                body = found.json()
                seen.generations.append(body["generation"])
                seen.passages += [(h["document_id"], h["text"]) for h in body["hits"]]
                seen.saw_new.append(any(h["file"] == "flux.md" for h in body["hits"]))
            else:
                seen.errors.append(f"search {found.status_code}: {found.text[:300]}")
            if last_round:
                return
            time.sleep(0.5)


def test_queries_during_an_ingest_all_succeed_and_see_only_committed_passages(server) -> None:
    with server.client() as http:
        job = http.post("/v1/kbs/sample/documents", files=[("files", ("flux.md", NEW_DOCUMENT.encode()))]).json()
        ingesting = threading.Event()
        ingesting.set()
        seen = [Seen() for _ in range(CLIENTS)]
        threads = [threading.Thread(target=client, args=(server, n, ingesting, seen[n])) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        done = follow_job(http, job["id"], timeout_s=240)
        ingesting.clear()
        for t in threads:
            t.join(timeout=300)
        after = http.post("/v1/kbs/sample/search", json={"query": QUERY, "top_k": 3}).json()

    assert done["status"] == "done" and done["files"][0]["status"] == "ingested"
    assert [e for s in seen for e in s.errors] == []
    with open_store(server.settings, "sample") as kb:
        held = {(c.doc_id, c.text) for c in kb.chunks([cid for cid, _ in kb.chunk_ids()]).values()}
    shown = {p for s in seen for p in s.passages}
    assert shown and shown <= held, "a passage shown that the base does not hold"
    for s in seen:
        assert s.generations == sorted(s.generations), "a client saw the base go back a generation"
    outcomes = [x for s in seen for x in s.saw_new]
    assert False in outcomes and True in outcomes, "the queries overlapped the ingest: before and after"
    assert after["hits"][0]["file"] == "flux.md" and after["generation"] == done["report"]["generation"]
