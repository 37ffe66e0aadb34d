"""discover -> stat/hash -> diff -> load -> chunk -> embed -> commit, with progress.

Files stream through: only a bounded batch of chunks is held before it is embedded and staged,
so memory stays flat whatever the corpus size.  Progress is committed every
``ingest.commit_interval_s`` seconds (and at the end, and on Ctrl-C), so an interrupted run
keeps what it finished and the next run picks up the rest.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import hashlib
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ingest.chunking import Chunker, chunker_fingerprint
from ingest.context import indexed_text
from ingest.loaders import ArchiveLimits, LoadError, OcrSettings, is_supported, load_file
from rag.config import Settings
from rag.embed import Embedder
from rag.lexical import tokenize
from rag.store import DocumentInfo, KBError, Store, StoreWriter, create_store, delete_base, open_store, store_exists
from rag.types import Chunk, Page

# Chunks of many files wait to be embedded together, sorted by length, so that each batch the
# model runs holds texts of about the same length and little padding: on SciFact, 512 waiting
# chunks cost 5.6% more model work than sorting the whole corpus, 4,096 cost 0.9%.  They are
# encoded in slices of ENCODE_CHUNKS, so progress still moves every few seconds.
FLUSH_CHUNKS = 4096
ENCODE_CHUNKS = 512
# A file with this many chunks gets its cost said up front (chunks, minutes) before embedding.
ESTIMATE_FROM = 1000
RATE_SAMPLE = 64  # chunks encoded to measure the embedding rate when none is known yet


@dataclass
class Problem:
    path: str
    status: str  # "failed" | "empty"
    reason: str


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicate: int = 0
    removed: int = 0
    failed: int = 0
    empty: int = 0
    chunks_written: int = 0
    seconds: float = 0.0
    generation: int = 0
    interrupted: bool = False
    reindexed: bool = False  # the keyword index was rebuilt for this version's BM25 windows
    dense_converted: str | None = None  # the dense index was rebuilt as this kind (ingest.dense_index)
    problems: list[Problem] = field(default_factory=list)
    # Files found in the folders given but in formats no loader reads, by extension: not failures
    # (a folder of papers holds images too), but a user looking for their .doc files is told.
    unsupported: Counter[str] = field(default_factory=Counter)

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file is in the base, 1 when some could not be ingested."""
        return 1 if (self.failed or self.empty or self.interrupted) else 0


@dataclass
class Prepared:
    """What was found out about one file (by the reader thread or a Ray worker), without touching
    the database."""

    path: str
    existing: DocumentInfo | None
    kind: str  # "unchanged" | "touched" | "content" | "problem"
    size: int | None = None
    mtime: float | None = None
    sha256: str | None = None
    pages: int = 0
    chunks: list[Chunk] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    problem: Problem | None = None
    note: str | None = None  # stored as the document's error: pages of it that could not be read
    vectors: np.ndarray | None = None  # already embedded (on a Ray cluster); else embedded in a batch here

    @property
    def stat(self) -> dict[str, object]:
        return {"size": self.size, "mtime": self.mtime, "sha256": self.sha256}


class Source(Protocol):
    """Prepared files, in order, for the writer: the reader thread here or a Ray cluster."""

    def __iter__(self) -> Iterator[Prepared]: ...
    def stop(self) -> None: ...


class Progress:
    """What the pipeline tells its caller; the CLI draws it with rich, tests may ignore it.
    `working` reports progress inside one large file (stage "chunking" or "embedding", in
    characters or chunks) and may be called from the reader thread; `announce` is a line worth
    keeping (what a huge file will cost)."""

    def files_total(self, n: int) -> None: ...
    def file_done(self, path: str) -> None: ...
    def chunks_done(self, n: int) -> None: ...
    def problem(self, problem: Problem) -> None: ...
    def note(self, text: str) -> None: ...
    def working(self, path: str, stage: str, done: int, total: int) -> None: ...
    def announce(self, text: str) -> None: ...


def document_key(path: Path) -> str:
    """How a file is named in the base. A name that is not valid UTF-8 (old zip or Samba
    archives) cannot be stored as SQLite text, so its odd bytes are kept as escapes (\\xff):
    the file is still ingested, kept in step, and shown readably."""
    key = str(path)
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        key = os.fsencode(path).decode("utf-8", "backslashreplace")
    return key


def _matches(path: Path, pattern: str | None) -> bool:
    if not pattern:
        return True
    return fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(path), pattern)


def discover(
    paths: Iterable[Path], pattern: str | None = None, include_hidden: bool = False
) -> tuple[list[Path], list[Path], list[Problem], Counter[str]]:
    """Files to ingest, the roots they came from (for --sync), paths that cannot be read, and the
    extensions of files in the folders that no loader reads (none counted under --glob)."""
    files: list[Path] = []
    roots: list[Path] = []
    problems: list[Problem] = []
    unsupported: Counter[str] = Counter()
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            roots.append(path)
            files += _walk(path, pattern, include_hidden, unsupported)
        elif path.is_file() or path.is_symlink():
            roots.append(path)
            files.append(path)
        else:
            problems.append(Problem(str(path), "failed", "no such file or folder; check the path"))
    return sorted(set(files)), roots, problems, unsupported


def _walk(root: Path, pattern: str | None, include_hidden: bool, unsupported: Counter[str]) -> list[Path]:
    found = []
    for folder, dirs, names in os.walk(root):
        if not include_hidden:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if name.startswith(".") and not include_hidden:
                continue
            path = Path(folder) / name
            if _matches(path, pattern) if pattern else is_supported(path):
                found.append(path)
            elif not pattern and path.is_file():
                unsupported[path.suffix.lower() or "(no extension)"] += 1
    return found


def _under(path: str, roots: list[Path]) -> bool:
    return any(path == document_key(r) or path.startswith(document_key(r) + os.sep) for r in roots)


class FileParser:
    """load -> chunk -> BM25 tokens for one file's bytes: the part of an ingest that needs no
    knowledge base, so the same code runs in the reader thread here and in a Ray task
    (ingest/cluster.py).  `max_text_bytes`/`backend`: the longest chunk the store holds."""

    def __init__(self, settings: Settings, embedder: Embedder, max_text_bytes: int | None, backend: str) -> None:
        self.settings = settings
        self.embedder = embedder
        self.max_text_bytes = max_text_bytes
        self.backend = backend
        self.limits = ArchiveLimits.from_settings(settings.ingest)
        self.ocr = OcrSettings.from_settings(settings.ingest)
        self.progress = Progress()
        self._chunker: Chunker | None = None

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:  # needs the embedder's tokenizer: loads the model
            self.progress.note(f"loading {self.embedder.name}")
            # Its own copy of the tokenizer: a fast tokenizer is not safe to share between the
            # reader thread (chunking) and the embedder (which resets its truncation state).
            tokenizer = copy.deepcopy(self.embedder.tokenizer)
            self._chunker = Chunker(self.settings.chunk, tokenizer, self.embedder.max_tokens)
        return self._chunker

    def parse(self, found: Prepared, path: Path, data: bytes) -> Prepared:
        """The file's chunks and BM25 tokens, or why it has none (found.kind = "problem")."""
        key, existing = found.path, found.existing
        try:
            pages = load_file(
                path,
                data,
                self.limits,
                self.ocr,
                progress=lambda done, total: self.progress.working(key, "ocr", done, total),
            )
        except LoadError as exc:
            return mark_problem(key, existing, exc.status, str(exc), found)
        except MemoryError:
            limit = self.settings.ingest.worker_memory_mb
            cap = f" (the ingest worker's limit, ingest.worker_memory_mb = {limit:g})" if limit else ""
            return mark_problem(key, existing, "failed", f"ran out of memory while parsing it{cap}", found)
        except Exception as exc:  # a parser bug on one odd file must not stop the run
            reason = f"could not parse ({type(exc).__name__}: {exc}); please report this file"
            return mark_problem(key, existing, "failed", reason, found)
        found.pages = len(pages)
        found.note = unread_pages(pages)
        chunker = self.chunker
        found.chunks = chunker.split_pages(
            pages, progress=lambda done, total: self.progress.working(key, "chunking", done, total)
        )
        if not found.chunks:
            return mark_problem(key, existing, "empty", "no text found", found)
        too_long = self._too_long(found.chunks)
        if too_long:
            found.chunks = []
            return mark_problem(key, existing, "failed", too_long, found)
        limit = self.settings.ingest.max_chunks_per_file
        if limit is None or len(found.chunks) <= limit:  # one that is refused is not worth tokenizing
            found.tokens = [" ".join(tokenize(self.indexed(c))) for c in found.chunks]  # BM25's, off the main thread
        return found

    def indexed(self, chunk: Chunk) -> str:
        """What the embedder and BM25 see of a chunk: with its title and heading (chunk.context)."""
        return indexed_text(chunk) if self.settings.chunk.context else chunk.text

    def _too_long(self, chunks: list[Chunk]) -> str | None:
        """Why the store cannot hold these chunks (Milvus keeps at most 64 KB of text in one)."""
        limit = self.max_text_bytes
        longest = max((len(c.text.encode()) for c in chunks), default=0) if limit else 0
        if not limit or longest <= limit:
            return None
        return (
            f"a chunk of {longest:,} bytes is longer than the {self.backend} store holds ({limit:,}); "
            "use chunk.method = 'recursive' (the default) for files this long"
        )


class IngestPipeline:
    def __init__(self, settings: Settings, embedder: Embedder, kb: Store) -> None:
        self.settings = settings
        self.embedder = embedder
        self.kb = kb
        self.fingerprint = chunker_fingerprint(settings.chunk)
        self.parser = FileParser(settings, embedder, kb.max_text_bytes, kb.backend)
        self._checked = False
        self.max_bytes = int(settings.ingest.max_file_mb * 1024 * 1024)
        self.embed_rate: float | None = None  # chunks/s, once measured in this run

    @property
    def progress(self) -> Progress:
        return self.parser.progress

    @progress.setter
    def progress(self, progress: Progress) -> None:
        self.parser.progress = progress

    def check_model(self) -> None:
        """Before the first file is parsed here: the model is loaded (for its tokenizer) and the
        base is checked against it, dimension included."""
        if not self._checked:
            self._checked = True
            self.parser.chunker  # noqa: B018 -- loads the model, saying so
            identity = self.parser.embedder.identity
            self.kb.check_embedder(identity.name, identity.normalize, identity.dimension)

    def run(
        self,
        paths: Iterable[Path],
        pattern: str | None = None,
        sync: bool = False,
        progress: Progress | None = None,
        skip: Collection[str] = (),
    ) -> IngestReport:
        """`skip`: document keys left untouched (files that killed an earlier worker)."""
        progress = self.progress = progress or Progress()
        report = IngestReport()
        started = time.perf_counter()
        files, roots, problems, report.unsupported = discover(paths, pattern, self.settings.ingest.include_hidden)
        files = [f for f in files if document_key(f) not in skip] if skip else files
        progress.files_total(len(files))
        known = {d.path: d for d in self.kb.documents()}  # one query, not one per file
        try:
            report.generation = self._run(files, roots, problems, known, report, pattern, sync)
        except BaseException:
            self._discard_if_new()
            raise
        report.seconds = time.perf_counter() - started
        return report

    def _discard_if_new(self) -> None:
        """A base this run created and never committed to is not left behind, empty, by a failure."""
        if self.kb.created_now and self.kb.generation == 0:
            with contextlib.suppress(KBError):  # e.g. another process has started writing it
                delete_base(self.settings, self.kb.name, self.kb.backend)

    def _run(
        self,
        files: list[Path],
        roots: list[Path],
        problems: list[Problem],
        known: dict[str, DocumentInfo],
        report: IngestReport,
        pattern: str | None,
        sync: bool,
    ) -> int:
        progress = self.progress
        with self.kb.writer(self.settings.ingest.dense_index) as writer:
            report.reindexed = writer.reindex and bool(known)  # a new base is indexed, not re-indexed
            report.dense_converted = writer.dense_kind if writer.convert and known else None
            run = _Run(self, writer, report, progress)
            for problem in problems:  # paths that do not exist: reported, not recorded
                run.report_problem(problem)
            reader = self._source(files, known)
            try:
                for prepared in reader:
                    run.apply(prepared)
                    run.maybe_commit()
                run.flush()
                if sync:
                    seen = {document_key(p) for p in files}
                    stale = [d for d in self.kb.documents() if _is_stale(d.path, seen, roots, pattern)]
                    writer.remove_documents(d.doc_id for d in stale)
                    report.removed = len(stale)
            except KeyboardInterrupt:
                report.interrupted = True
                run.flush()
            finally:
                reader.stop()
            return writer.commit()

    def _source(self, files: list[Path], known: dict[str, DocumentInfo]) -> Source:
        """Where prepared files come from: the reader thread here, or a Ray cluster (ingest.ray)."""
        if self.settings.ingest.ray:
            from ingest.cluster import ClusterSource

            return ClusterSource(self, files, known)
        return _Reader(self, files, known)

    def prepare(self, path: Path, existing: DocumentInfo | None) -> Prepared:
        """stat -> (skip if unchanged) -> read -> hash -> load -> chunk.  Pure: runs in the reader
        thread, so parsing the next files overlaps with embedding the previous ones."""
        found, data = self.examine(path, existing)
        if data is None:
            return found
        self.check_model()
        return self.parser.parse(found, path, data)

    def examine(self, path: Path, existing: DocumentInfo | None) -> tuple[Prepared, bytes | None]:
        """What a file is to the base: unchanged (by size and time, never read), touched (same
        bytes), a problem, or new content (kind "content", hashed) with its bytes to parse."""
        key = document_key(path)
        self.progress.working(key, "reading", 0, 0)
        try:
            st = path.stat()
        except OSError as exc:
            return mark_problem(key, existing, "failed", f"cannot read: {exc.strerror or exc}"), None
        fresh = existing is not None and existing.status != "failed" and existing.chunker == self.fingerprint
        if fresh and existing.size == st.st_size and existing.mtime == st.st_mtime:
            return Prepared(key, existing, "unchanged"), None
        found = Prepared(key, existing, "content", size=st.st_size, mtime=st.st_mtime)
        if st.st_size > self.max_bytes:
            limit = self.settings.ingest.max_file_mb
            reason = f"{st.st_size / 2**20:.0f} MB is over ingest.max_file_mb ({limit:g}); raise it to ingest this file"
            return mark_problem(key, existing, "failed", reason, found), None
        try:
            data = path.read_bytes()
        except OSError as exc:
            return mark_problem(key, existing, "failed", f"cannot read: {exc.strerror or exc}", found), None
        found.sha256 = hashlib.sha256(data).hexdigest()
        if fresh and existing.sha256 == found.sha256:
            found.kind = "touched"  # same bytes, new mtime: nothing to re-embed
            return found, None
        return found, data

    def indexed(self, chunk: Chunk) -> str:
        return self.parser.indexed(chunk)


def unread_pages(pages: list[Page]) -> str | None:
    """'OCR read nothing on pages 3, 7' for the scanned pages of a document that came out blank."""
    blank = [p.page_no for p in pages if p.metadata.get("read") == "ocr" and not p.text.strip()]
    if not blank:
        return None
    listed = ", ".join(map(str, blank[:20])) + (f" and {len(blank) - 20} more" if len(blank) > 20 else "")
    return f"OCR read nothing on page{'s' if len(blank) > 1 else ''} {listed} (blank, or too faint or blurred)"


def too_many_chunks(n: int, limit: int, cost: str = "") -> str:
    return f"{n:,} chunks{cost} is over ingest.max_chunks_per_file ({limit:,}); raise it to ingest this file"


def _cost(n: int, rate: float | None) -> str:
    """' (about 62 min to embed at 21 chunks/s)', or '' before any rate is measured."""
    if not rate:
        return ""
    seconds = n / rate
    if seconds < 90:
        took = f"{seconds:.0f} s"
    elif seconds < 90 * 60:
        took = f"{seconds / 60:.0f} min"
    else:
        took = f"{seconds / 3600:.1f} h"
    return f" (about {took} to embed at {rate:.0f} chunks/s)"


def mark_problem(
    key: str, existing: DocumentInfo | None, status: str, reason: str, found: Prepared | None = None
) -> Prepared:
    """`found` (or a new record of the file) as a problem: recorded with this status and reason."""
    found = found or Prepared(key, existing, "problem")
    found.kind, found.problem = "problem", Problem(key, status, reason)
    return found


def _is_stale(path: str, seen: set[str], roots: list[Path], pattern: str | None) -> bool:
    """For --sync: under a given path, of a kind this run would ingest, but not seen on disk."""
    if not _under(path, roots) or path in seen:
        return False
    return _matches(Path(path), pattern) if pattern else is_supported(Path(path))


class _Reader:
    """Prepares files in a background thread, a bounded number ahead of the embedder.

    Hand-written rather than a process pool: on a small machine torch already uses every core
    for encoding, and one thread of parsing overlapped with it is what keeps the embedder busy
    (bench/ingest.py measures the effect) without holding the corpus in memory."""

    AHEAD = 32

    def __init__(self, pipe: IngestPipeline, files: list[Path], known: dict[str, DocumentInfo]) -> None:
        self.queue: queue.Queue[Prepared | BaseException | None] = queue.Queue(maxsize=self.AHEAD)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(pipe, files, known), daemon=True)
        self.thread.start()

    def _work(self, pipe: IngestPipeline, files: list[Path], known: dict[str, DocumentInfo]) -> None:
        try:
            for path in files:
                if self.stopping.is_set():
                    return
                self._put(pipe.prepare(path, known.get(document_key(path))))
            self._put(None)
        except BaseException as exc:  # e.g. the model failed to load: re-raised in the main thread
            self._put(exc)

    def _put(self, item: Prepared | BaseException | None) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[Prepared]:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)


class _Run:
    """State of one ingest run: the batch waiting to be embedded and the commit clock."""

    def __init__(self, pipe: IngestPipeline, writer: StoreWriter, report: IngestReport, progress: Progress) -> None:
        self.pipe = pipe
        self.kb = pipe.kb
        self.writer = writer
        self.report = report
        self.progress = progress
        self.pending: list[Prepared] = []
        self.pending_sha: set[str] = set()
        self.pending_chunks = 0
        self.last_commit = time.monotonic()
        self.last_commit_cost = 0.0
        self.embedded = 0
        self.embed_seconds = 0.0

    def report_problem(self, problem: Problem) -> None:
        self.progress.problem(problem)
        self.report.problems.append(problem)
        setattr(self.report, problem.status, getattr(self.report, problem.status) + 1)

    def record_problem(self, problem: Problem, existing: DocumentInfo | None, **stat: object) -> None:
        self.report_problem(problem)
        # A file that was fine before keeps its chunks until a readable version comes back:
        # a bad save or a vanished mount must not wipe what the base knew.
        if existing is not None and existing.status in ("ok", "duplicate") and problem.status == "failed":
            return
        self.writer.put_document(
            path=problem.path, status=problem.status, error=problem.reason, chunker=self.pipe.fingerprint, **stat
        )

    def apply(self, item: Prepared) -> None:
        """Stage what the reader found; only this (main) thread touches the database."""
        try:
            self._apply(item)
        finally:
            self.progress.file_done(item.path)

    def _apply(self, item: Prepared) -> None:
        if item.kind == "unchanged":
            self.report.unchanged += 1
        elif item.kind == "touched":
            self.writer.touch(item.existing.doc_id, path=item.path, size=item.size, mtime=item.mtime)
            self.report.unchanged += 1
        elif item.kind == "problem":
            self.record_problem(item.problem, item.existing, **item.stat)
        else:
            if item.sha256 in self.pending_sha:
                self.flush()  # its twin must be stored before this one can point at it
            twin = self.kb.twin(item.sha256, self.pipe.fingerprint, item.path)
            if twin is not None:
                self.writer.put_document(
                    path=item.path, status="duplicate", chunker=self.pipe.fingerprint, content_of=twin, **item.stat
                )
                self.report.duplicate += 1
                return
            limit = self.pipe.settings.ingest.max_chunks_per_file
            big = len(item.chunks) >= ESTIMATE_FROM or (limit is not None and len(item.chunks) > limit)
            if big and item.vectors is None and not self.weigh(item):
                return
            self.pending.append(item)
            self.pending_sha.add(item.sha256)
            self.pending_chunks += len(item.chunks)
            if self.pending_chunks >= FLUSH_CHUNKS:
                self.flush()

    def weigh(self, item: Prepared) -> bool:
        """Say what a large file will cost before spending it: its chunks and the minutes they
        take at this machine's embedding rate (measured now if the run has none yet); refuse it
        past ingest.max_chunks_per_file. True when it goes ahead."""
        if self.pipe.embed_rate is None:
            sample = [c.text for c in item.chunks[:RATE_SAMPLE]]
            self.pipe.embedder.encode_passages(sample[:2])  # the first call pays for warming up
            started = time.perf_counter()
            self.pipe.embedder.encode_passages(sample)
            self.pipe.embed_rate = len(sample) / max(time.perf_counter() - started, 1e-6)
        n, limit = len(item.chunks), self.pipe.settings.ingest.max_chunks_per_file
        cost = _cost(n, self.pipe.embed_rate)
        if limit is not None and n > limit:
            problem = Problem(item.path, "failed", too_many_chunks(n, limit, cost))
            self.record_problem(problem, item.existing, **item.stat)
            return False
        self.progress.announce(f"{Path(item.path).name}: {n:,} chunks to embed{cost}")
        return True

    def flush(self) -> None:
        """Embed the waiting chunks (those not embedded already) and stage their documents."""
        if not self.pending:
            return
        self.embed_pending()
        for item in self.pending:
            self.writer.put_document(
                path=item.path,
                status="ok",
                error=item.note,
                pages=item.pages,
                chunker=self.pipe.fingerprint,
                chunks=item.chunks,
                vectors=item.vectors,
                tokens=item.tokens,
                **item.stat,
            )
            item.vectors = None  # staged: the batch's memory can go
            if item.existing is not None:
                self.report.updated += 1
            else:
                self.report.added += 1
        self.report.chunks_written += self.pending_chunks
        self.pending.clear()
        self.pending_sha.clear()
        self.pending_chunks = 0

    def embed_pending(self) -> None:
        """One encode over every waiting file that has no vectors yet, split back per file."""
        todo = [item for item in self.pending if item.vectors is None]
        texts = [self.pipe.indexed(c) for p in todo for c in p.chunks]
        if not texts:
            return
        vectors = self.embed(texts, todo[0].path if len(todo) == 1 else "")
        offset = 0
        for item in todo:
            item.vectors = vectors[offset : offset + len(item.chunks)]
            offset += len(item.chunks)

    def embed(self, texts: list[str], one_file: str) -> np.ndarray:
        """Encode longest first, in slices, so progress moves (and the rate is measured) inside a
        large file (`one_file`, when the texts are all one file's); the vectors come back in the
        order of `texts`."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors: np.ndarray | None = None
        for start in range(0, len(texts), ENCODE_CHUNKS):
            rows = order[start : start + ENCODE_CHUNKS]
            began = time.perf_counter()
            part = self.pipe.embedder.encode_passages([texts[i] for i in rows])
            self._measured(len(rows), time.perf_counter() - began)
            if vectors is None:
                vectors = np.empty((len(texts), part.shape[1]), dtype=part.dtype)
            vectors[rows] = part
            self.progress.chunks_done(len(rows))
            if one_file and len(texts) > ENCODE_CHUNKS:
                self.progress.working(one_file, "embedding", start + len(rows), len(texts))
        assert vectors is not None  # flush() only embeds when chunks are waiting
        return vectors

    def _measured(self, n: int, seconds: float) -> None:
        self.embedded += n
        self.embed_seconds += seconds
        if self.embedded >= RATE_SAMPLE:
            self.pipe.embed_rate = self.embedded / max(self.embed_seconds, 1e-6)

    def maybe_commit(self) -> None:
        """Commit every commit_interval_s, but never spend more than ~5% of the run committing:
        a commit rewrites the whole index, so it costs more as the base grows."""
        interval = self.pipe.settings.ingest.commit_interval_s
        wait = max(interval, 20 * self.last_commit_cost) if interval > 0 else 0.0  # 0: after every file
        if time.monotonic() - self.last_commit >= wait:
            self.flush()
            started = time.monotonic()
            self.writer.commit()
            self.last_commit = time.monotonic()
            self.last_commit_cost = self.last_commit - started


def open_for_ingest(settings: Settings, kb_name: str, embedder: Embedder) -> Store:
    """Create the base if new; refuse one built with a different embedding model.  An existing
    base is checked by model name, so the model is only loaded if something needs embedding.
    A new base is only created once the chunk settings are known to suit the model."""
    if store_exists(settings, kb_name):
        kb = open_store(settings, kb_name)
        kb.check_embedder(embedder.name, embedder.settings.normalize)
        return kb
    identity = embedder.identity  # loads the model, which a new base needs anyway
    Chunker(settings.chunk, embedder.tokenizer, embedder.max_tokens)  # raises if chunk.size cannot fit
    return create_store(settings, kb_name, identity)
