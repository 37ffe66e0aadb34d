"""Limits that keep one client, or one burst, from taking the server down for everyone else.

- `RateLimiter`: requests per minute per key (a token bucket: bursts up to the minute's worth).
- `Slots`: how many answers are generated at once; a question that cannot get a slot within
  api.queue_wait_s is told to come back (429 with Retry-After) instead of waiting unboundedly.
- `BodyLimit`: request bodies past api.max_request_mb (uploads: api.max_upload_mb per file) are
  refused with 413 before they are read, or as soon as a chunked body runs past the limit.

Each says "busy" in the one error shape with a Retry-After, never by hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import APIError, error_response

UPLOAD_PATH = re.compile(r"^/v1/kbs/[^/]+/documents/?$")
MB = 2**20


class RateLimiter:
    """A token bucket per caller: `per_minute` requests a minute, in bursts of up to as many
    (0 or None: no limit)."""

    def __init__(self, per_minute: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when counted)
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Count one request; APIError 429 (with the seconds until the next one) when over."""
        if not self.per_minute:
            return
        rate = self.per_minute / 60.0
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(caller, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - then) * rate)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                raise APIError(
                    429,
                    f"rate limit: at most {self.per_minute} requests a minute (api.rate_limit_per_minute)",
                    "rate_limited",
                    retry_after=(1.0 - tokens) / rate,
                )
            self._buckets[caller] = (tokens - 1.0, now)


class Slots:
    """At most `n` answers generated at once; a waiter gives up after `wait_s`."""

    def __init__(self, n: int, wait_s: float) -> None:
        self.n = n
        self.wait_s = wait_s
        self._free = threading.BoundedSemaphore(n)

    def acquire(self) -> None:
        """Block until a slot is free, at most wait_s; APIError 429 after that."""
        if not self._free.acquire(timeout=self.wait_s):
            raise self._busy()

    def _busy(self) -> APIError:
        return APIError(
            429,
            f"all {self.n} answer slots are busy (api.answer_slots) and none came free within "
            f"{self.wait_s:g} s (api.queue_wait_s); try again shortly",
            "answer_slots_busy",
            retry_after=min(self.wait_s, 10.0),
        )

    async def acquire_async(self) -> None:
        """acquire() for the event loop: polls rather than blocking a thread, so a client that
        goes away while waiting leaves no thread behind to take a slot nobody will free."""
        deadline = time.monotonic() + self.wait_s
        while not self._free.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise self._busy()
            await asyncio.sleep(0.05)

    def release(self) -> None:
        self._free.release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()


class _TooLarge(StarletteHTTPException):
    """Raised from `receive` when a body runs past its limit.  An HTTPException, because FastAPI
    turns any other error met while reading a body into "400: error parsing the body"."""

    code = "request_too_large"

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodyLimit:
    """ASGI middleware: a request body larger than its limit is answered 413.  The declared
    Content-Length is checked before anything is read; a chunked body is counted as it arrives."""

    def __init__(self, app: ASGIApp, max_request_mb: float, max_upload_mb: float, max_upload_files: int) -> None:
        self.app = app
        self.request_limit = int(max_request_mb * MB)
        # A multipart body holds the files and a little framing per file.
        self.upload_limit = int(max_upload_mb * MB) * max_upload_files + MB
        self.max_request_mb = max_request_mb
        self.max_upload_mb = max_upload_mb
        self.max_upload_files = max_upload_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope["method"] == "POST" and bool(UPLOAD_PATH.match(scope["path"]))
        limit = self.upload_limit if upload else self.request_limit
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(upload)(scope, receive, send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(self._message(upload))
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _TooLarge:  # raised past a handler that would have answered it (the MCP app)
            if not started:
                await self._refuse(upload)(scope, receive, send)

    def _message(self, upload: bool) -> str:
        if upload:
            return (
                f"upload too large: at most {self.max_upload_files} files (api.max_upload_files) of "
                f"{self.max_upload_mb:g} MB each (api.max_upload_mb) per request"
            )
        return f"request body too large: at most {self.max_request_mb:g} MB (api.max_request_mb)"

    def _refuse(self, upload: bool):
        return error_response(413, self._message(upload), "request_too_large")
