"""Knowledge bases: where they live and how to open them, whatever the backend.

`store.backend` in the settings picks where bases live: ``local`` (a folder per base under
``<data_dir>/kb/``) or ``milvus`` (collections in the Milvus at ``store.uri``).  Everything
above this package opens bases through these functions and talks to the `Store` contract
(rag.store.base) only.
"""

from __future__ import annotations

from rag.config import Settings
from rag.embed import EmbedderIdentity
from rag.store.base import (
    Allowed,
    DocumentInfo,
    Filters,
    KBError,
    KBLocked,
    KBReadOnly,
    ModelMismatch,
    Store,
    StoreUnavailable,
    StoreWriter,
)

__all__ = [
    "Allowed",
    "DocumentInfo",
    "Filters",
    "KBError",
    "KBLocked",
    "KBReadOnly",
    "ModelMismatch",
    "Store",
    "StoreUnavailable",
    "StoreWriter",
    "base_stamp",
    "create_store",
    "delete_base",
    "list_bases",
    "open_store",
    "store_exists",
]


def _backend(settings: Settings, backend: str | None):
    """The module of `backend` (default: the settings'), imported only when used."""
    match backend or settings.store.backend:
        case "local":
            from rag.store import local

            return local
        case "milvus":
            from rag.store import milvus

            return milvus
    raise KBError(f"unknown store.backend {backend!r}: use 'local' or 'milvus'")


def open_store(settings: Settings, name: str, backend: str | None = None) -> Store:
    """An existing knowledge base; KBError naming how to create it when there is none."""
    return _backend(settings, backend).open_base(settings, settings.kb_name(name))


def create_store(settings: Settings, name: str, identity: EmbedderIdentity, backend: str | None = None) -> Store:
    """The knowledge base `name`, created empty (recording the embedding model) if it is new."""
    return _backend(settings, backend).create_base(settings, settings.kb_name(name), identity)


def store_exists(settings: Settings, name: str, backend: str | None = None) -> bool:
    return _backend(settings, backend).base_exists(settings, settings.kb_name(name))


def base_stamp(settings: Settings, name: str, backend: str | None = None) -> str | None:
    """What tells one incarnation of a base from the next (None: there is none now): a long-lived
    reader holding a base that was deleted and created again under its name must reopen it."""
    return _backend(settings, backend).base_stamp(settings, settings.kb_name(name))


def list_bases(settings: Settings, backend: str | None = None) -> list[str]:
    return _backend(settings, backend).list_names(settings)


def delete_base(settings: Settings, name: str, backend: str | None = None) -> None:
    """Delete a whole knowledge base, and nothing else; KBLocked while it is being written."""
    _backend(settings, backend).delete_base(settings, settings.kb_name(name))
