"""What every route and MCP tool of one server process shares: the settings, the open knowledge
bases with their models, the ingest jobs, the answer slots and the access rules.  Built once by
create_app (or `rag mcp`) from the settings; nothing here is global."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import Request

from rag.config import Settings, is_loopback
from rag.embed import Embedder
from server.auth import Access
from server.bases import Bases
from server.jobs import Jobs
from server.keys import KeyStore
from server.limits import RateLimiter, Slots

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


@dataclass
class Services:
    settings: Settings
    bases: Bases
    jobs: Jobs
    slots: Slots
    access: Access

    @classmethod
    def create(
        cls,
        settings: Settings,
        host: str,
        embedder: Embedder | None = None,
        chat_model: BaseChatModel | None = None,
    ) -> Services:
        """`host`: the address the server listens on (keyless use is allowed on loopback only)."""
        api = settings.api
        return cls(
            settings=settings,
            bases=Bases(settings, embedder, chat_model),
            jobs=Jobs(settings),
            slots=Slots(api.answer_slots, api.queue_wait_s),
            access=Access(KeyStore(settings.keys_file), RateLimiter(api.rate_limit_per_minute), is_loopback(host)),
        )


def services(request: Request) -> Services:
    """The Services of the app serving `request` (a FastAPI dependency)."""
    return request.app.state.services
