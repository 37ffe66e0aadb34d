"""discover -> stat/hash -> diff -> load -> chunk -> embed -> commit, with progress.

Files stream through: only a bounded batch of chunks is held before it is embedded and staged,
so memory stays flat whatever the corpus size.  Progress is committed every
``ingest.commit_interval_s`` seconds (and at the end, and on Ctrl-C), so an interrupted run
keeps what it finished and the next run picks up the rest.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.chunking import Chunker, chunker_fingerprint
from ingest.loaders import LoadError, is_supported, load_file
from rag.config import Settings
from rag.embed import Embedder
from rag.kb import DocumentInfo, KBWriter, KnowledgeBase
from rag.types import Chunk

# Embedding many files' chunks in one encode call lets sentence-transformers sort by length
# and fill its batches; this bounds how many chunks wait in memory for that.
FLUSH_CHUNKS = 512


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
    problems: list[Problem] = field(default_factory=list)

    @property
    def chunks_per_second(self) -> float:
        return self.chunks_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0 when every file is in the base, 1 when some could not be ingested."""
        return 1 if (self.failed or self.empty or self.interrupted) else 0


@dataclass
class _Pending:
    path: str
    sha256: str
    size: int
    mtime: float
    pages: int
    chunks: list[Chunk]
    replaces: bool


class Progress:
    """What the pipeline tells its caller; the CLI draws it with rich, tests may ignore it."""

    def files_total(self, n: int) -> None: ...
    def file_done(self, path: str) -> None: ...
    def chunks_done(self, n: int) -> None: ...
    def problem(self, problem: Problem) -> None: ...
    def note(self, text: str) -> None: ...


def _matches(path: Path, pattern: str | None) -> bool:
    return fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(str(path), pattern) if pattern else True


def discover(
    paths: Iterable[Path], pattern: str | None = None, include_hidden: bool = False
) -> tuple[list[Path], list[Path], list[Problem]]:
    """Files to ingest, the roots they came from (for --sync), and paths that cannot be read."""
    files: list[Path] = []
    roots: list[Path] = []
    problems: list[Problem] = []
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            roots.append(path)
            files += _walk(path, pattern, include_hidden)
        elif path.is_file() or path.is_symlink():
            roots.append(path)
            files.append(path)
        else:
            problems.append(Problem(str(path), "failed", "no such file or folder; check the path"))
    return sorted(set(files)), roots, problems


def _walk(root: Path, pattern: str | None, include_hidden: bool) -> list[Path]:
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
    return found


def _under(path: str, roots: list[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r) + os.sep) for r in roots)


class IngestPipeline:
    def __init__(self, settings: Settings, embedder: Embedder, kb: KnowledgeBase) -> None:
        self.settings = settings
        self.embedder = embedder
        self.kb = kb
        self.fingerprint = chunker_fingerprint(settings.chunk)
        self._chunker: Chunker | None = None
        self.progress = Progress()
        self.max_bytes = int(settings.ingest.max_file_mb * 1024 * 1024)

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:  # needs the embedder's tokenizer: loads the model
            self.progress.note(f"loading {self.embedder.name}")
            self._chunker = Chunker(self.settings.chunk, self.embedder.tokenizer, self.embedder.max_tokens)
            identity = self.embedder.identity
            self.kb.check_embedder(identity.name, identity.normalize, identity.dimension)
        return self._chunker

    def run(
        self,
        paths: Iterable[Path],
        pattern: str | None = None,
        sync: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        progress = self.progress = progress or Progress()
        report = IngestReport()
        started = time.perf_counter()
        files, roots, problems = discover(paths, pattern, self.settings.ingest.include_hidden)
        progress.files_total(len(files))
        with KBWriter(self.kb) as writer:
            run = _Run(self, writer, report, progress)
            for problem in problems:  # paths that do not exist: reported, not recorded
                run.report_problem(problem)
            try:
                for path in files:
                    run.process(path)
                    run.maybe_commit()
                run.flush()
                if sync:
                    seen = {str(p) for p in files}
                    stale = [
                        d
                        for d in self.kb.documents()
                        if _under(d.path, roots)
                        and d.path not in seen
                        and _matches(Path(d.path), pattern)
                        and (pattern or is_supported(Path(d.path)))
                    ]
                    writer.remove_documents(d.doc_id for d in stale)
                    report.removed = len(stale)
            except KeyboardInterrupt:
                report.interrupted = True
                run.flush()
            report.generation = writer.commit()
        report.seconds = time.perf_counter() - started
        return report


class _Run:
    """State of one ingest run: the batch waiting to be embedded and the commit clock."""

    def __init__(self, pipe: IngestPipeline, writer: KBWriter, report: IngestReport, progress: Progress) -> None:
        self.pipe = pipe
        self.kb = pipe.kb
        self.writer = writer
        self.report = report
        self.progress = progress
        self.pending: list[_Pending] = []
        self.pending_sha: set[str] = set()
        self.last_commit = time.monotonic()

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
        self.writer.put_document(path=problem.path, status=problem.status, error=problem.reason, **stat)

    def process(self, path: Path) -> None:
        key = str(path)
        existing = self.kb.document_by_path(key)
        try:
            self._process(path, key, existing)
        finally:
            self.progress.file_done(key)

    def _process(self, path: Path, key: str, existing: DocumentInfo | None) -> None:
        fingerprint = self.pipe.fingerprint
        try:
            st = path.stat()
        except OSError as exc:
            self.record_problem(Problem(key, "failed", f"cannot read: {exc.strerror or exc}"), existing)
            return
        if (
            existing
            and existing.status != "failed"
            and existing.chunker == fingerprint
            and (existing.size == st.st_size and existing.mtime == st.st_mtime)
        ):
            self.report.unchanged += 1
            return
        stat = {"size": st.st_size, "mtime": st.st_mtime}
        if st.st_size > self.pipe.max_bytes:
            limit = self.pipe.settings.ingest.max_file_mb
            reason = f"{st.st_size / 2**20:.0f} MB is over ingest.max_file_mb ({limit:g}); raise it to ingest this file"
            self.record_problem(Problem(key, "failed", reason), existing, **stat)
            return
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.record_problem(Problem(key, "failed", f"cannot read: {exc.strerror or exc}"), existing, **stat)
            return
        sha = hashlib.sha256(data).hexdigest()
        if existing and existing.sha256 == sha and existing.status != "failed" and existing.chunker == fingerprint:
            self.writer.touch(existing.doc_id, path=key, **stat)  # same bytes, new mtime
            self.report.unchanged += 1
            return
        if sha in self.pending_sha:
            self.flush()  # its twin must be stored before this one can point at it
        twin = self._stored_twin(sha, key, fingerprint)
        if twin is not None:
            self.writer.put_document(
                path=key, sha256=sha, status="duplicate", chunker=fingerprint, content_of=twin, **stat
            )
            self.report.duplicate += 1
            return
        stat["sha256"] = sha
        try:
            pages = load_file(path, data)
        except LoadError as exc:
            self.record_problem(Problem(key, exc.status, str(exc)), existing, **stat)
            return
        except Exception as exc:  # a parser bug on one odd file must not stop the run
            reason = f"could not parse ({type(exc).__name__}: {exc}); please report this file"
            self.record_problem(Problem(key, "failed", reason), existing, **stat)
            return
        chunks = self.pipe.chunker.split_pages(pages)
        if not chunks:
            self.record_problem(Problem(key, "empty", "no text found"), existing, **stat)
            return
        self.pending.append(_Pending(key, sha, st.st_size, st.st_mtime, len(pages), chunks, existing is not None))
        self.pending_sha.add(sha)
        if sum(len(p.chunks) for p in self.pending) >= FLUSH_CHUNKS:
            self.flush()

    def _stored_twin(self, sha: str, path: str, fingerprint: str) -> int | None:
        row = self.kb.conn.execute(
            "SELECT doc_id FROM documents WHERE sha256 = ? AND status = 'ok' AND chunker = ? AND path != ? LIMIT 1",
            (sha, fingerprint, path),
        ).fetchone()
        return int(row[0]) if row else None

    def flush(self) -> None:
        """Embed the waiting chunks and stage their documents."""
        if not self.pending:
            return
        texts = [c.text for p in self.pending for c in p.chunks]
        vectors = self.pipe.embedder.encode_passages(texts)
        offset = 0
        for item in self.pending:
            n = len(item.chunks)
            self.writer.put_document(
                path=item.path,
                sha256=item.sha256,
                size=item.size,
                mtime=item.mtime,
                status="ok",
                pages=item.pages,
                chunker=self.pipe.fingerprint,
                chunks=item.chunks,
                vectors=vectors[offset : offset + n],
            )
            offset += n
            if item.replaces:
                self.report.updated += 1
            else:
                self.report.added += 1
        self.report.chunks_written += len(texts)
        self.progress.chunks_done(len(texts))
        self.pending.clear()
        self.pending_sha.clear()

    def maybe_commit(self) -> None:
        if time.monotonic() - self.last_commit >= self.pipe.settings.ingest.commit_interval_s:
            self.flush()
            self.writer.commit()
            self.last_commit = time.monotonic()


def open_for_ingest(settings: Settings, kb_name: str, embedder: Embedder) -> KnowledgeBase:
    """Create the base if new; refuse one built with a different embedding model.  An existing
    base is checked by model name, so the model is only loaded if something needs embedding."""
    root = settings.kb_dir(kb_name)
    if KnowledgeBase.exists(root):
        kb = KnowledgeBase.open(root)
        kb.check_embedder(embedder.name, embedder.settings.normalize)
        return kb
    return KnowledgeBase.create(root, embedder.identity)
