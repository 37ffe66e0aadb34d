"""The knowledge bases a server process answers from, opened once and shared by every request.

Each base is opened once (its indexes load on first search and reload by themselves when an
ingest commits a new generation) and wrapped in `SharedStore`, which lets one thread at a time
into it: a store handle holds one SQLite connection and caches its indexes, and neither is meant
for several threads at once.  Only the store calls are serialized, each a few milliseconds; the
embedding of a question and the generation of an answer, which take the time, run beside them.

The embedding model and the chat model are loaded once per process, whatever the number of
bases, and handed to rag.stack, which builds each base's answering stack as everywhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.config import Settings
from rag.embed import Embedder
from rag.stack import answering, embedder_for, lazy_chat_model
from rag.store import Allowed, DocumentInfo, Filters, KBReadOnly, Store, StoreWriter, base_stamp, open_store
from rag.types import Chunk
from server.errors import APIError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rag.qa import QA


class SharedStore(Store):
    """A Store that serializes every call into the one it wraps."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.backend = inner.backend
        self.name = inner.name
        self.read_only = inner.read_only
        self.max_text_bytes = inner.max_text_bytes
        self._lock = threading.RLock()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return getattr(self.inner, method)(*args, **kwargs)

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def generation(self) -> int:
        with self._lock:
            return self.inner.generation

    def meta(self) -> dict[str, Any]:
        return self._call("meta")

    def documents(self, status: str | None = None) -> list[DocumentInfo]:
        return self._call("documents", status)

    def document_by_path(self, path: str) -> DocumentInfo | None:
        return self._call("document_by_path", path)

    def twin(self, sha256: str, chunker: str, path: str) -> int | None:
        return self._call("twin", sha256, chunker, path)

    def chunk_count(self) -> int:
        return self._call("chunk_count")

    def size_on_disk(self) -> int | None:
        return self._call("size_on_disk")

    def chunks(self, ids: Sequence[int]) -> dict[int, Chunk]:
        return self._call("chunks", ids)

    def document_chunk_ids(self, doc_id: int) -> list[int]:
        return self._call("document_chunk_ids", doc_id)

    def chunk_ids(self, min_chars: int = 0) -> list[tuple[int, int]]:
        return self._call("chunk_ids", min_chars)

    def chunk_tokens(self, ids: Sequence[int]) -> dict[int, list[str]]:
        return self._call("chunk_tokens", ids)

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        return self._call("vectors", ids)

    def allowed(self, filters: Filters) -> Allowed:
        return self._call("allowed", filters)

    def dense_candidates(self, qvec: np.ndarray, k: int, allowed: Allowed | None = None) -> list[tuple[int, float]]:
        return self._call("dense_candidates", qvec, k, allowed)

    def lexical_candidates(self, query: str, k: int, allowed: Allowed | None = None) -> list[tuple[int, float]]:
        return self._call("lexical_candidates", query, k, allowed)

    def dense_scores(self, qvec: np.ndarray, ids: Sequence[int]) -> dict[int, float]:
        return self._call("dense_scores", qvec, ids)

    def lexical_scores(self, query: str, ids: Sequence[int]) -> dict[int, float]:
        return self._call("lexical_scores", query, ids)

    def writer(self, dense_index: str | None = None) -> StoreWriter:
        # Writes go through a store of their own (ingest jobs, deletions), never this shared reader.
        raise KBReadOnly("this handle is the server's shared reader; open the store to write")

    def close(self) -> None:
        self._call("close")


class Bases:
    """Knowledge bases by name, each with its answering stack, for every request of a process.

    :param settings: the server's settings.
    :param embedder: an embedder already loaded (default: one for settings.embed, loaded on first use).
    :param chat_model: a chat model already loaded (default: rag.llm's, loaded for the first answer).
    """

    def __init__(
        self, settings: Settings, embedder: Embedder | None = None, chat_model: BaseChatModel | None = None
    ) -> None:
        self.settings = settings
        self.embedder = embedder or embedder_for(settings)
        self._chat_model = chat_model
        self._make_chat_model = lazy_chat_model(settings)
        self._chat_lock = threading.Lock()
        self._open: dict[str, tuple[str, QA]] = {}
        self._lock = threading.Lock()

    def chat_model(self) -> BaseChatModel:
        """The one chat model of the process, loaded by the first answer that needs it."""
        with self._chat_lock:
            if self._chat_model is None:
                self._chat_model = self._make_chat_model()
            return self._chat_model

    def exists(self, name: str) -> bool:
        return base_stamp(self.settings, name) is not None

    def qa(self, name: str) -> QA:
        """The answering stack of base `name`; APIError 404 when there is no such base.  A base
        deleted and created again under the same name is a new base, and is opened anew."""
        stamp = base_stamp(self.settings, name)
        if stamp is None:
            raise no_such_base(name)
        with self._lock:
            cached = self._open.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            store = SharedStore(open_store(self.settings, name))
            qa = answering(self.settings, store, embedder=self.embedder, chat_model=self.chat_model)
            self._open[name] = (stamp, qa)
            return qa

    def store(self, name: str) -> Store:
        """Base `name`'s shared store, for reading."""
        return self.qa(name).retriever.kb

    def forget(self, names: Iterable[str] | None = None) -> None:
        """Drop the handles of `names` (default: all); requests still using one finish with it."""
        with self._lock:
            for name in list(self._open if names is None else names):
                self._open.pop(name, None)


def no_such_base(name: str) -> APIError:
    return APIError(404, f"no knowledge base named {name!r}; create it with POST /v1/kbs", "kb_not_found")
