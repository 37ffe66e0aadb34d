"""The web UI's uploads: stored by ingest.uploads (path-safe, inside the base's own folder, never
over another file) with the UI's size limit, ui.max_upload_mb, and the ingest's archive limits."""

from __future__ import annotations

from ingest.loaders import ArchiveLimits
from ingest.uploads import Stored, is_upload, remove_documents, store_upload, supported_types
from rag.config import Settings

__all__ = ["Stored", "is_upload", "remove_documents", "save", "supported_types"]


def save(settings: Settings, kb_name: str, original: str, data: bytes) -> Stored:
    """Store one file the browser sent into base `kb_name`'s folder, or say why not."""
    limit = settings.ui.max_upload_mb
    return store_upload(
        settings.kb_dir(kb_name),
        original,
        data,
        int(limit * 2**20),
        f"{limit:g} MB (ui.max_upload_mb)",
        ArchiveLimits.from_settings(settings.ingest),
    )
