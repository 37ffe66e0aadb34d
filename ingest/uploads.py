"""Files sent over the network (the web UI's uploads, the API's), kept inside a knowledge base's
own folder, safely; and removing documents together with those copies.

A client sends a file name chosen by whoever made the file: it may hold `../`, a Windows path,
control characters, or the name of a document already in the base.  Names are reduced to a
plain file name, files land only in ``<kb>/files/``, and an existing file is never replaced:
identical content is recognised as already there, different content gets a free name.  A file
over the size limit, of a type no loader reads, or a zip-based file that would unpack past the
ingest's limits (ingest.max_unpacked_mb, ingest.max_compression_ratio) is refused before it is
written.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ingest.loaders import LOADERS, ArchiveLimits, LoadError, check_archive
from rag.config import Settings
from rag.store import open_store

FILES_DIR = "files"
MAX_STEM = 100
_UNSAFE = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_SPACES = re.compile(r"\s+")


def supported_types() -> list[str]:
    """Extensions an upload may have (without dots), the loaders' list."""
    return sorted(ext.lstrip(".") for ext in LOADERS)


def files_dir(kb_root: Path) -> Path:
    return kb_root / FILES_DIR


def safe_filename(name: str) -> str:
    """A plain, visible file name: last path component only, no separators or control
    characters, no leading dots (no hidden files, no `..`), bounded length.  Letters of any
    script are kept, so 说明书.pdf stays readable."""
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE.sub("_", name)
    name = "".join(ch for ch in name if ch.isprintable())
    name = _SPACES.sub(" ", name).strip().lstrip(".").strip()
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    stem = stem.strip(" .")[:MAX_STEM].strip() or "upload"
    suffix = suffix.strip()[:16].lower()
    return f"{stem}.{suffix}" if suffix else stem


@dataclass(frozen=True)
class Stored:
    """What happened to one uploaded file."""

    original: str
    status: Literal["saved", "already there", "rejected"]
    message: str
    path: Path | None = None
    too_large: bool = False  # rejected for its size (an API answers 413 when every file was)


def too_large(original: str, size: int, limit_label: str) -> Stored:
    """The refusal of a file of `size` bytes over the limit (a caller that knows the size of a
    file it has not read yet need not read it to refuse it)."""
    message = f"{original} is {size / 2**20:.1f} MB, over the upload limit of {limit_label}"
    return Stored(original, "rejected", message, None, True)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _candidates(name: str):
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    yield name
    n = 2
    while True:
        yield f"{stem}-{n}{dot}{suffix}"
        n += 1


def store_upload(
    kb_root: Path,
    original: str,
    data: bytes,
    max_bytes: int,
    limit_label: str,
    archive: ArchiveLimits | None = None,
) -> Stored:
    """Write one upload under ``<kb>/files/`` without ever replacing an existing file.

    :param limit_label: the size limit as the user should read it, e.g. "50 MB (ui.max_upload_mb)".
    :param archive: when given, a zip-based file that would unpack past these limits is refused.
    """
    if len(data) > max_bytes:
        return too_large(original, len(data), limit_label)
    if not data:
        return Stored(original, "rejected", f"{original} is empty")
    name = safe_filename(original)
    suffix = Path(name).suffix
    if suffix not in LOADERS:
        kinds = ", ".join(f".{t}" for t in supported_types())
        return Stored(original, "rejected", f"{original}: unsupported file type {suffix or '(none)'}; use {kinds}")
    if archive is not None:
        try:
            check_archive(data, archive)
        except LoadError as exc:
            return Stored(original, "rejected", f"{original}: {exc}", None, True)
    folder = files_dir(kb_root)
    folder.mkdir(parents=True, exist_ok=True)
    digest = _sha256(data)
    # Written completely under a temporary name, then linked into place: os.link fails rather
    # than replace an existing file, so two uploads racing for one name both survive.
    fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        for candidate in _candidates(name):
            target = folder / candidate
            if target.exists():
                if target.is_file() and _sha256(target.read_bytes()) == digest:
                    return Stored(original, "already there", f"{candidate} is already in this knowledge base", target)
                continue
            try:
                os.link(tmp, target)
            except FileExistsError:
                continue
            renamed = f" (saved as {candidate}: another document has that name)" if candidate != name else ""
            return Stored(original, "saved", f"{original}{renamed}", target)
    finally:
        os.unlink(tmp)
    raise AssertionError("unreachable: the candidate names never run out")


def is_upload(kb_root: Path, path: str | Path) -> bool:
    """True for a document whose file is the base's own stored upload (removed with it)."""
    try:
        return Path(path).resolve().parent == files_dir(kb_root).resolve()
    except OSError:
        return False


def remove_documents(settings: Settings, name: str, doc_ids: Sequence[int]) -> int:
    """Remove documents and their vectors from base `name`; the base's own copy of an uploaded
    file goes too (a file elsewhere on disk is never touched).  Returns the new generation.
    KBLocked while another process writes the base."""
    root = settings.kb_dir(name)
    wanted = set(doc_ids)
    with open_store(settings, name) as kb:
        doomed = [d for d in kb.documents() if d.doc_id in wanted]
        with kb.writer() as writer:
            writer.remove_documents(d.doc_id for d in doomed)
            generation = writer.commit()
    for d in doomed:
        if is_upload(root, d.path):
            Path(d.path).unlink(missing_ok=True)
    return generation
