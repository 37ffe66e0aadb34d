"""Every endpoint × every kind of caller: no key, a bad key, read, write and admin keys for the
base, and an admin key for another base.  401 without a valid key, 403 without the role or the
base (which then does not exist for it: lists leave it out), and the work done otherwise."""

from __future__ import annotations

import json

import pytest

from server.jobs import Job
from tests.server.conftest import copy_of_samples, running, server_settings

OFF_TOPIC = "What is the capital of France?"
CALLERS = ("none", "bad", "read", "write", "admin", "other")
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
JOB = "job_0123456789abcdef"


@pytest.fixture(scope="module")
def server(sample_kb_dir, tmp_path_factory, embedder, short_chat_model):
    data = copy_of_samples(sample_kb_dir, tmp_path_factory.mktemp("auth"))
    # A job recorded by another replica sharing this data directory.
    (data / "api" / "jobs").mkdir(parents=True)
    (data / "api" / "jobs" / f"{JOB}.json").write_text(json.dumps(Job(JOB, "sample", [], status="done").to_json()))
    with running(server_settings(data), embedder, short_chat_model) as srv:
        yield srv


@pytest.fixture(scope="module")
def keys(server) -> dict[str, str | None]:
    return {
        "none": None,
        "bad": "rag_not-a-key-at-all",
        "read": server.key("reader", ["sample"], "read"),
        "write": server.key("writer", ["sample"], "write"),
        "admin": server.key("admin", ["sample*"], "admin"),
        "other": server.key("stranger", ["other*"], "admin"),
    }


@pytest.fixture(scope="module")
def document(server, keys) -> int:
    with server.client(keys["read"]) as http:
        return next(d["id"] for d in http.get("/v1/kbs/sample/documents").json()["documents"] if d["file"] == "faq.txt")


def request(http, endpoint: str, document: int):
    chat = {"model": "sample", "messages": [{"role": "user", "content": OFF_TOPIC}]}
    calls = {
        "list models": lambda: http.get("/v1/models"),
        "chat": lambda: http.post("/v1/chat/completions", json=chat),
        "list bases": lambda: http.get("/v1/kbs"),
        "create base": lambda: http.post("/v1/kbs", json={"name": "sample-new"}),
        "delete base": lambda: http.delete("/v1/kbs/sample-gone"),
        "list documents": lambda: http.get("/v1/kbs/sample/documents"),
        "upload": lambda: http.post("/v1/kbs/sample/documents", files=[("files", ("a.exe", b"MZ"))]),
        "download": lambda: http.get(f"/v1/kbs/sample/documents/{document}/file"),
        "remove document": lambda: http.delete("/v1/kbs/sample/documents/999999"),
        "search": lambda: http.post("/v1/kbs/sample/search", json={"query": "warranty"}),
        "job": lambda: http.get(f"/v1/jobs/{JOB}"),
        "mcp": lambda: http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=MCP_HEADERS),
    }
    return calls[endpoint]()


# What a caller with a valid key gets: (read, write, admin, other).  The allowed requests are made
# cheap on purpose (a base that does not exist, a file type no loader reads): what is checked here
# is that they get past the key and role, to the work.
EXPECTED = {
    "list models": (200, 200, 200, 200),
    "chat": (200, 200, 200, 403),
    "list bases": (200, 200, 200, 200),
    "create base": (403, 403, 201, 403),
    "delete base": (403, 403, 404, 403),
    "list documents": (200, 200, 200, 403),
    "upload": (403, 400, 400, 403),
    "download": (200, 200, 200, 403),
    "remove document": (403, 404, 404, 403),
    "search": (200, 200, 200, 403),
    "job": (200, 200, 200, 403),
    "mcp": (None, None, None, None),  # the MCP app's own answer; each tool checks the base (test_tools)
}


@pytest.mark.parametrize("who", CALLERS)
@pytest.mark.parametrize("endpoint", list(EXPECTED))
def test_auth_matrix(server, keys, document, endpoint: str, who: str) -> None:
    with server.client(keys[who]) as http:
        got = request(http, endpoint, document)
        if endpoint == "create base" and got.status_code == 201:
            assert http.delete("/v1/kbs/sample-new").status_code == 200
    if who in ("none", "bad"):
        assert got.status_code == 401
        assert got.json()["error"]["type"] == "authentication_error" and got.headers["www-authenticate"] == "Bearer"
        return
    expected = EXPECTED[endpoint][("read", "write", "admin", "other").index(who)]
    if expected is None:
        assert got.status_code not in (401, 403), got.text
        return
    assert got.status_code == expected, got.text
    if expected == 403:
        assert got.json()["error"]["type"] == "permission_error"
    if endpoint in ("list models", "list bases"):
        body = got.json()
        names = [m["id"] for m in body["data"]] if endpoint == "list models" else [b["name"] for b in body]
        assert names == ([] if who == "other" else ["sample"]), "a key for another base sees nothing of this one"


def test_the_refusals_say_what_is_missing(server, keys) -> None:
    with server.client(keys["read"]) as http:
        upload = http.post("/v1/kbs/sample/documents", files=[("files", ("a.txt", b"hello"))]).json()["error"]
    assert upload["code"] == "role_forbidden" and "has the read role; this needs write" in upload["message"]
    with server.client(keys["other"]) as http:
        search = http.post("/v1/kbs/sample/search", json={"query": "warranty"}).json()["error"]
    assert search["code"] == "kb_forbidden" and "not for knowledge base 'sample'" in search["message"]
    with server.client() as http:
        missing = http.get("/v1/kbs").json()["error"]
    assert missing["code"] == "missing_api_key" and "Authorization: Bearer" in missing["message"]


def test_a_revoked_key_is_refused_from_its_next_request(server) -> None:
    from server.keys import KeyStore

    key = server.key("short-lived", ["sample"], "read")
    with server.client(key) as http:
        assert http.get("/v1/kbs").status_code == 200
        KeyStore(server.settings.keys_file).revoke("short-lived")
        again = http.get("/v1/kbs")
    assert again.status_code == 401 and again.json()["error"]["message"] == "invalid or revoked API key"


def test_the_api_description_and_health_need_no_key(server) -> None:
    with server.client() as http:
        assert http.get("/health").json() == {"status": "ok"}
        spec = http.get("/openapi.json").json()
        assert http.get("/docs").status_code == 200
    assert {"/v1/chat/completions", "/v1/kbs/{kb}/search", "/v1/jobs/{job_id}"} <= set(spec["paths"])
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
