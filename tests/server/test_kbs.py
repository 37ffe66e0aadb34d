"""Knowledge bases and documents over HTTP: an upload with hostile names, a file too large and a
zip bomb, stored safely and ingested by a job followed to completion; a busy base answered 409;
documents listed, downloaded and removed; bases created and deleted; body-size limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.bombs import docx_bomb
from tests.server.conftest import copy_of_samples, follow_job, running, server_settings

PUMPS = b"The circulation pump moves water through the heat exchanger at 40 litres a minute.\n"


@pytest.fixture(scope="module")
def server(sample_kb_dir, tmp_path_factory, embedder, short_chat_model):
    data = copy_of_samples(sample_kb_dir, tmp_path_factory.mktemp("kbs"))
    settings = server_settings(
        data, ingest={"max_unpacked_mb": 16}, max_upload_mb=1, max_upload_files=8, max_request_mb=0.5
    )
    with running(settings, embedder, short_chat_model) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server):
    with server.client() as client:
        yield client


def files_of(server, kb: str = "sample") -> Path:
    return server.settings.data_dir / "kb" / kb / "files"


@pytest.mark.slow
def test_an_upload_is_stored_safely_then_ingested_by_a_job(server, http, tmp_path: Path) -> None:
    bomb = docx_bomb(tmp_path / "bomb.docx", 24).read_bytes()
    sent = [
        ("../../../etc/pumps.txt", PUMPS),
        ("..\\..\\Windows\\valves.MD", b"# Valves\n\nThe bypass valve opens at 3 bar of pressure.\n"),
        ("\x1b[2Kcontrol\u202etxt.txt", b"Control characters in a name are not obeyed by anything.\n"),
        ("说明书.md", "# 说明书\n\n循环泵每分钟输送 40 升水。\n".encode()),
        ("big.txt", b"word " * 300_000),  # 1.5 MB: over api.max_upload_mb
        ("report.docx", bomb),  # unpacks to 24 MB: over ingest.max_unpacked_mb
        ("setup.exe", b"MZ"),
    ]
    reply = http.post("/v1/kbs/sample/documents", files=[("files", f) for f in sent])
    assert reply.status_code == 202, reply.text
    job = reply.json()
    outcome = {f["name"]: f for f in job["files"]}

    # Refused before anything was written, each with its reason.
    assert (
        outcome["big.txt"]["status"] == "rejected" and "over the upload limit of 1 MB" in outcome["big.txt"]["message"]
    )
    bombed = outcome["report.docx"]
    assert bombed["status"] == "rejected" and "unpacks to 25 MB (limit 16 MB" in bombed["message"]
    assert "unsupported file type .exe" in outcome["setup.exe"]["message"]
    # The rest stored in the base's own folder under plain names; nothing anywhere else.
    stored = sorted(p.name for p in files_of(server).iterdir())
    assert stored == sorted(["pumps.txt", "valves.md", "_[2Kcontroltxt.txt", "说明书.md"])
    assert {f["stored_as"] for f in job["files"] if f["status"] == "queued"} == set(stored)
    data = server.settings.data_dir
    assert not list(data.parent.rglob("etc")) and not (data / "pumps.txt").exists()

    # While the job runs or waits, the base is busy for other writers: 409 with Retry-After, at once.
    some_document = http.get("/v1/kbs/sample/documents").json()["documents"][0]["id"]
    for busy in (http.delete("/v1/kbs/sample"), http.delete(f"/v1/kbs/sample/documents/{some_document}")):
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "kb_busy"
        assert int(busy.headers["retry-after"]) >= 1

    done = follow_job(http, job["id"])
    assert done["status"] == "done" and done["error"] is None
    assert done["progress"]["files_total"] == done["progress"]["files_done"] == 4
    assert done["report"]["added"] == 4 and done["report"]["failed"] == 0
    ingested = [f for f in done["files"] if f["status"] != "rejected"]
    assert all(f["status"] == "ingested" and f["document_id"] and f["chunks"] >= 1 for f in ingested)
    assert "path" not in ingested[0], "the server's own paths are never sent"

    listed = {d["file"]: d for d in http.get("/v1/kbs/sample/documents").json()["documents"]}
    assert set(stored) <= set(listed) and listed["pumps.txt"]["status"] == "ok"
    hits = http.post("/v1/kbs/sample/search", json={"query": "circulation pump litres", "mode": "bm25"}).json()["hits"]
    assert hits[0]["file"] == "pumps.txt" and hits[0]["document_id"] == listed["pumps.txt"]["id"]

    # The original comes back as uploaded; removing the document removes the stored copy too.
    pumps = listed["pumps.txt"]["id"]
    assert http.get(f"/v1/kbs/sample/documents/{pumps}/file").content == PUMPS
    removed = http.delete(f"/v1/kbs/sample/documents/{pumps}")
    assert removed.status_code == 200 and removed.json()["generation"] > done["report"]["generation"]
    assert not (files_of(server) / "pumps.txt").exists()
    assert http.get(f"/v1/kbs/sample/documents/{pumps}/file").status_code == 404
    assert http.delete(f"/v1/kbs/sample/documents/{pumps}").status_code == 404


def test_an_upload_with_nothing_storable_is_an_error_and_makes_no_job(http, tmp_path: Path) -> None:
    too_big = http.post("/v1/kbs/sample/documents", files=[("files", ("big.pdf", b"%PDF" + b"x" * 1_100_000))])
    assert (
        too_big.status_code == 413 and "big.pdf is 1.0 MB, over the upload limit" in too_big.json()["error"]["message"]
    )
    wrong = http.post("/v1/kbs/sample/documents", files=[("files", ("a.exe", b"MZ")), ("files", ("b.txt", b""))])
    assert wrong.status_code == 400
    assert "unsupported file type .exe" in wrong.json()["error"]["message"] and "b.txt is empty" in wrong.text
    nowhere = http.post("/v1/kbs/nowhere/documents", files=[("files", ("a.txt", b"hello"))])
    assert nowhere.status_code == 404 and "POST /v1/kbs" in nowhere.json()["error"]["message"]


def test_request_bodies_past_their_limits_are_refused_with_413(http) -> None:
    big_json = http.post("/v1/kbs/sample/search", json={"query": "x" * 600_000})
    assert big_json.status_code == 413 and "api.max_request_mb" in big_json.json()["error"]["message"]
    many = [("files", (f"f{i}.txt", b"hello")) for i in range(9)]
    too_many = http.post("/v1/kbs/sample/documents", files=many)
    assert too_many.status_code == 413 and "api.max_upload_files" in too_many.json()["error"]["message"]


def test_a_knowledge_base_is_created_and_deleted(http) -> None:
    created = http.post("/v1/kbs", json={"name": "fresh"})
    assert created.status_code == 201
    assert created.json() == {
        "name": "fresh",
        "documents": 0,
        "failed": 0,
        "chunks": 0,
        "generation": 0,
        "embed_model": "sentence-transformers/all-MiniLM-L6-v2",
        "read_only": False,
    }
    assert http.post("/v1/kbs", json={"name": "fresh"}).status_code == 409
    bad = http.post("/v1/kbs", json={"name": "../escape"})
    assert bad.status_code == 400 and "not a knowledge-base name" in bad.json()["error"]["message"]
    assert {b["name"] for b in http.get("/v1/kbs").json()} == {"sample", "fresh"}
    assert http.delete("/v1/kbs/fresh").json() == {"deleted": "fresh"}
    assert {b["name"] for b in http.get("/v1/kbs").json()} == {"sample"}
    assert http.delete("/v1/kbs/fresh").status_code == 404
