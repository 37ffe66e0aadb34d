"""A real `rag api` server (uvicorn on a free loopback port, in a thread) over a private copy of
the demo knowledge base, with the session's embedder and LLM, and HTTP clients to talk to it."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from rag.config import Settings
from server.keys import KeyStore
from tests.conftest import qa_settings
from tests.fixtures.openai_server import free_port

ANSWER_TOKENS = 32  # enough for "ten years [1]"; keeps each answer about a second


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT
    settings: Settings

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120, **kwargs)

    def key(self, name: str, kbs: list[str], role: str) -> str:
        return KeyStore(self.settings.keys_file).create(name, kbs, role)[1]  # type: ignore[arg-type]


def copy_of_samples(sample_kb_dir: Path, dest: Path) -> Path:
    """A private data folder holding a copy of the session's `sample` base (a module may change it)."""
    shutil.copytree(sample_kb_dir / "kb", dest / "kb")
    return dest


@contextmanager
def running(settings: Settings, embedder, chat_model, host: str = "127.0.0.1") -> Iterator[Server]:
    """create_app(settings) under uvicorn on a free port, stopped at the end."""
    from server.app import create_app

    port = free_port()
    app = create_app(settings, host=host, embedder=embedder, chat_model=chat_model)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    try:
        yield Server(f"http://{host}:{port}", settings)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def short_chat_model(chat_model):
    """The session's local LLM, with short answers."""
    return chat_model.model_copy(update={"max_new_tokens": ANSWER_TOKENS})


def server_settings(data_dir: Path, ingest: dict[str, Any] | None = None, **api: Any) -> Settings:
    """Settings for a test server: short answers, and `api` (and `ingest`) settings as given."""
    sections = {"ingest": ingest} if ingest else {}
    return qa_settings(data_dir, llm={"max_new_tokens": ANSWER_TOKENS}, api=api, **sections)


def follow_job(client: httpx.Client, job_id: str, timeout_s: float = 180) -> dict:
    """Poll GET /v1/jobs/{id} until the job has finished; its last record."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("done", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout_s} s: {job}"
        time.sleep(0.3)
