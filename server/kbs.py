"""Knowledge bases and their documents over HTTP: list, create and delete bases; upload files
(stored path-safe in the base's own folder, then ingested by a job), follow the job, list,
download and remove documents.

Who may do what is server.auth's (read: look, write: add and remove documents, admin: create and
delete bases).  A base being written by another process, or by one of this server's jobs, is
answered 409 with a Retry-After, never waited for.
"""

from __future__ import annotations

import errno
import mimetypes
import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from ingest.loaders import ArchiveLimits
from ingest.uploads import Stored, files_dir, remove_documents, store_upload, supported_types, too_large
from rag.config import Settings, check_kb_name
from rag.store import DocumentInfo, create_store, delete_base, list_bases, open_store, store_exists
from server.auth import Principal, caller, needs
from server.bases import no_such_base
from server.errors import RETRY_BUSY_S, APIError
from server.jobs import FileOutcome
from server.services import Services, services

router = APIRouter(tags=["knowledge bases"])


class KBInfo(BaseModel):
    name: str
    documents: int = Field(description="documents in the base (duplicates included)")
    failed: int = Field(description="files that could not be ingested (failed, or no text)")
    chunks: int
    generation: int = Field(description="counts commits; changes whenever the base does")
    embed_model: str
    read_only: bool


class DocumentOut(BaseModel):
    id: int
    file: str
    status: str = Field(description="ok | failed | empty | duplicate")
    error: str | None
    pages: int | None
    chunks: int
    size: int | None
    added_at: float
    duplicate_of: int | None = Field(description="for a duplicate: the document whose content it shares")


class NewKB(BaseModel):
    name: str = Field(description="letters, digits, '-', '_' and '.', starting with a letter or digit")


# ---- bases ---------------------------------------------------------------------------------------
def _info(settings: Settings, name: str) -> KBInfo:
    with open_store(settings, name) as kb:
        docs = kb.documents()
        return KBInfo(
            name=name,
            documents=len(docs),
            failed=sum(d.status in ("failed", "empty") for d in docs),
            chunks=kb.chunk_count(),
            generation=kb.generation,
            embed_model=str(kb.meta()["embed_model"]),
            read_only=kb.read_only,
        )


@router.get("/v1/kbs", summary="The knowledge bases this key may read")
def list_kbs(
    svc: Annotated[Services, Depends(services)], principal: Annotated[Principal, Depends(caller)]
) -> list[KBInfo]:
    return [_info(svc.settings, n) for n in list_bases(svc.settings) if principal.may(n, "read")]


@router.post("/v1/kbs", status_code=201, summary="Create an empty knowledge base (admin)")
def create_kb(
    body: NewKB, svc: Annotated[Services, Depends(services)], principal: Annotated[Principal, Depends(caller)]
) -> KBInfo:
    name = check_kb_name(body.name)
    principal.require(name, "admin")
    if store_exists(svc.settings, name):
        raise APIError(409, f"a knowledge base named {name!r} already exists", "kb_exists")
    create_store(svc.settings, name, svc.bases.embedder.identity).close()
    return _info(svc.settings, name)


@router.delete("/v1/kbs/{kb}", summary="Delete a knowledge base, its documents and its uploaded files (admin)")
def delete_kb(
    kb: str, svc: Annotated[Services, Depends(services)], _: Annotated[Principal, Depends(needs("admin"))]
) -> dict[str, Any]:
    if not store_exists(svc.settings, kb):
        raise no_such_base(kb)
    _not_while_ingesting(svc, kb)
    delete_base(svc.settings, kb)
    svc.bases.forget([kb])
    _remove_upload_folder(svc.settings, kb)
    return {"deleted": kb}


def _remove_upload_folder(settings: Settings, name: str) -> None:
    """A base kept elsewhere (Milvus) leaves its uploaded files in the data directory: they go too."""
    folder = files_dir(settings.kb_dir(name))
    if folder.is_dir() and not folder.is_symlink() and not folder.parent.is_symlink():
        shutil.rmtree(folder)
        if not any(folder.parent.iterdir()):
            folder.parent.rmdir()


def _not_while_ingesting(svc: Services, kb: str) -> None:
    if svc.jobs.busy(kb):
        raise APIError(
            409,
            f"an ingest job is running or waiting for {kb!r}; try again when it has finished",
            "kb_busy",
            retry_after=RETRY_BUSY_S,
        )


# ---- documents -----------------------------------------------------------------------------------
def _document_out(d: DocumentInfo) -> DocumentOut:
    return DocumentOut(
        id=d.doc_id,
        file=Path(d.path).name,
        status=d.status,
        error=d.error,
        pages=d.pages,
        chunks=d.chunks,
        size=d.size,
        added_at=d.added_at,
        duplicate_of=d.content_of,
    )


def _document(svc: Services, kb: str, doc_id: int) -> DocumentInfo:
    found = next((d for d in svc.bases.store(kb).documents() if d.doc_id == doc_id), None)
    if found is None:
        raise APIError(404, f"no document {doc_id} in knowledge base {kb!r}", "document_not_found")
    return found


@router.get("/v1/kbs/{kb}/documents", summary="The documents of a knowledge base, and why any failed")
def list_documents(
    kb: str, svc: Annotated[Services, Depends(services)], _: Annotated[Principal, Depends(needs("read"))]
) -> dict[str, Any]:
    store = svc.bases.store(kb)
    return {"kb": kb, "generation": store.generation, "documents": [_document_out(d) for d in store.documents()]}


@router.get(
    "/v1/kbs/{kb}/documents/{doc_id}/file",
    summary="Download a document's original file",
    response_class=FileResponse,
)
def document_file(
    kb: str, doc_id: int, svc: Annotated[Services, Depends(services)], _: Annotated[Principal, Depends(needs("read"))]
) -> FileResponse:
    path = Path(_document(svc, kb, doc_id).path)
    if not path.is_file():
        raise APIError(404, f"the original file of document {doc_id} is no longer on the server", "file_gone")
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=path.name)


@router.delete("/v1/kbs/{kb}/documents/{doc_id}", summary="Remove a document (write); an uploaded file goes too")
def delete_document(
    kb: str, doc_id: int, svc: Annotated[Services, Depends(services)], _: Annotated[Principal, Depends(needs("write"))]
) -> dict[str, Any]:
    _document(svc, kb, doc_id)
    _not_while_ingesting(svc, kb)
    generation = remove_documents(svc.settings, kb, [doc_id])
    return {"removed": doc_id, "generation": generation}


@router.post(
    "/v1/kbs/{kb}/documents",
    status_code=202,
    summary="Upload files into a knowledge base (write); they are ingested by a job",
)
async def upload_documents(
    kb: str,
    files: Annotated[list[UploadFile], File(description="one or more files: " + ", ".join(supported_types()))],
    svc: Annotated[Services, Depends(services)],
    _: Annotated[Principal, Depends(needs("write"))],
) -> dict[str, Any]:
    """Each file is refused, with the reason, when it is over api.max_upload_mb, of a type no
    loader reads, empty, or a zip-based file that would unpack past the ingest's limits; the others
    are stored under plain names in the base's own folder (never over another file) and ingested
    by the job returned.  Follow it at GET /v1/jobs/{id}.  When no file could be stored, the
    answer is an error (413 when a file was too large) and there is no job."""
    settings = svc.settings
    if not await run_in_threadpool(store_exists, settings, kb):
        raise no_such_base(kb)
    if len(files) > settings.api.max_upload_files:
        raise APIError(
            413, f"{len(files)} files in one upload; at most {settings.api.max_upload_files} (api.max_upload_files)"
        )
    svc.jobs.check_room(kb)
    stored = [await _store(settings, kb, f) for f in files]
    outcomes = [_outcome(s) for s in stored]
    if all(s.status == "rejected" for s in stored):
        reasons = "; ".join(s.message for s in stored)
        status = 413 if any(s.too_large for s in stored) else 400
        raise APIError(status, f"no file could be stored: {reasons}", "upload_rejected")
    try:
        job = svc.jobs.submit(kb, outcomes)
    except APIError:
        for s in stored:  # the queue filled up meanwhile: leave nothing behind that no job will read
            if s.status == "saved" and s.path is not None:
                s.path.unlink(missing_ok=True)
        raise
    return job.to_json()


async def _store(settings: Settings, kb: str, upload: UploadFile) -> Stored:
    name = upload.filename or "upload"
    limit = settings.api.max_upload_mb
    label = f"{limit:g} MB (api.max_upload_mb)"
    if upload.size is not None and upload.size > limit * 2**20:
        return too_large(name, upload.size, label)  # refused unread
    data = await upload.read()
    archive = ArchiveLimits.from_settings(settings.ingest)
    try:
        return await run_in_threadpool(
            store_upload, settings.kb_dir(kb), name, data, int(limit * 2**20), label, archive
        )
    except OSError as exc:  # a read-only or full disk: nothing can be added to this base now
        code = "kb_read_only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) else "storage_failed"
        raise APIError(
            409 if code == "kb_read_only" else 507, f"cannot store uploads in {kb!r}: {exc.strerror}", code
        ) from exc


def _outcome(stored: Stored) -> FileOutcome:
    if stored.path is None:
        return FileOutcome(stored.original, "rejected", stored.message)
    note = "" if stored.status == "saved" and stored.message == stored.original else stored.message
    return FileOutcome(stored.original, "queued", note, stored.path.name, path=str(stored.path))


# ---- jobs ------------------------------------------------------------------------------------------
@router.get("/v1/jobs/{job_id}", tags=["knowledge bases"], summary="An ingest job's progress and each file's outcome")
def get_job(
    job_id: str, svc: Annotated[Services, Depends(services)], principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    job = svc.jobs.get(job_id)
    if job is None:
        raise APIError(404, f"no ingest job {job_id!r}", "job_not_found")
    principal.require(job.kb, "read")
    return job.to_json()
