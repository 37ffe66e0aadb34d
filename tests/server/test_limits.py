"""Limits answer at once, in the one error shape with a Retry-After: a key past its rate, a question
when every answer slot is busy; a client that goes away gives its slot back."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from server.errors import APIError
from server.limits import BodyLimit, RateLimiter, Slots
from tests.server.conftest import copy_of_samples, running, server_settings

WARRANTY = "How long is the battery module covered by the warranty?"
SLOW_ANSWER = "The battery module is covered for ten years."  # streamed a character every 50 ms: ~2 s


@pytest.fixture(scope="module")
def server(sample_kb_dir, tmp_path_factory, embedder):
    data = copy_of_samples(sample_kb_dir, tmp_path_factory.mktemp("limits"))
    slow = FakeListChatModel(responses=[SLOW_ANSWER], sleep=0.05)
    settings = server_settings(data, rate_limit_per_minute=20, answer_slots=1, queue_wait_s=0.5)
    with running(settings, embedder, slow) as srv:
        yield srv


def ask(server, key: str, out: list, stream: bool = False) -> None:
    body = {"model": "sample", "messages": [{"role": "user", "content": WARRANTY}], "stream": stream}
    with server.client(key) as http:
        started = time.monotonic()
        reply = http.post("/v1/chat/completions", json=body)
        out.append((reply, time.monotonic() - started))


def test_a_key_past_its_rate_is_told_when_to_come_back(server) -> None:
    key, other = server.key("busy", ["sample"], "read"), server.key("calm", ["sample"], "read")
    with server.client(key) as http:
        codes = [http.get("/v1/models").status_code for _ in range(21)]
        over = http.get("/v1/models")
    assert codes[:20] == [200] * 20 and over.status_code == 429
    assert over.json()["error"]["code"] == "rate_limited" and "api.rate_limit_per_minute" in over.text
    assert 1 <= int(over.headers["retry-after"]) <= 3
    with server.client(other) as http:
        assert http.get("/v1/models").status_code == 200, "each key has its own limit"


@pytest.mark.slow
def test_with_every_answer_slot_busy_a_question_gets_429_not_a_wait(server) -> None:
    key = server.key("asker", ["sample"], "read")
    replies: list = []
    first = threading.Thread(target=ask, args=(server, key, replies))
    first.start()
    time.sleep(0.5)  # the first question holds the only slot (api.answer_slots = 1) for ~2 s
    ask(server, key, replies)
    first.join()
    busy, elapsed = replies[0]
    assert busy.status_code == 429 and busy.json()["error"]["code"] == "answer_slots_busy"
    assert int(busy.headers["retry-after"]) >= 1 and elapsed < 2.0, "refused after api.queue_wait_s, not later"
    answered = replies[1][0]
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"].startswith("The battery")


@pytest.mark.slow
def test_a_client_that_leaves_mid_answer_frees_its_slot(server) -> None:
    key = server.key("leaver", ["sample"], "read")
    body = {"model": "sample", "messages": [{"role": "user", "content": WARRANTY}], "stream": True}
    with server.client(key) as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        next(reply.iter_lines())  # the answer has started; now hang up
    replies: list = []
    ask(server, key, replies)
    assert replies[0][0].status_code == 200, "the slot came back within api.queue_wait_s"


def test_the_rate_limiter_refills_with_time() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    for _ in range(60):
        limiter.take("k")
    with pytest.raises(APIError) as over:
        limiter.take("k")
    assert over.value.status == 429 and over.value.retry_after == pytest.approx(1.0)
    now[0] = 1.0
    limiter.take("k")  # one request a second comes back
    RateLimiter(0).take("k")  # 0: no limit


def test_a_slot_waiter_gives_up_after_the_wait() -> None:
    slots = Slots(1, wait_s=0.2)
    with slots.held():
        started = time.monotonic()
        with pytest.raises(APIError) as busy:
            slots.acquire()
        assert 0.2 <= time.monotonic() - started < 1.0 and busy.value.status == 429
    slots.acquire()
    slots.release()


def test_a_chunked_body_is_cut_off_as_soon_as_it_runs_past_the_limit() -> None:
    """Without a Content-Length the body is counted as it arrives; the app stops reading at the limit."""
    read: list[int] = []

    async def app(scope, receive, send) -> None:  # reads the whole body, then answers 200
        while True:
            message = await receive()
            read.append(len(message.get("body", b"")))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = BodyLimit(app, max_request_mb=1, max_upload_mb=1, max_upload_files=2)
    pieces = [{"type": "http.request", "body": b"x" * 2**19, "more_body": True} for _ in range(10)]
    sent: list[dict] = []

    async def receive():
        return pieces.pop(0)

    async def send(message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/kbs/sample/search", "headers": []}
    asyncio.run(limited(scope, receive, send))
    assert sent[0]["status"] == 413 and sum(read) <= 2**20, "no more than the limit was read"
    assert b"api.max_request_mb" in sent[1]["body"]
