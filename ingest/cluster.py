"""The ingest's parse and embed stages on a Ray cluster (`rag ingest --ray`, `ingest.ray`).

What stays here, on the driver: discovery, stat and hashing, the diff against the base,
duplicates, and every write to the store.  So unchanged files are never sent anywhere, and the
store's guarantees (atomic commits, resumable after a kill, one bad file never stops the rest)
are those of a local ingest, whichever store it is.  What goes to the cluster is the changed
files, as a Ray Dataset:

- parsing (load -> chunk -> BM25 tokens) runs as Ray tasks, with the FileParser a local ingest uses;
- embedding runs in a pool of actors, one model each, in batches, on a GPU each where the cluster
  has them;
- the rows stream back in order and are put back together per file for the writer.

Workers read the files by path, so every node needs the documents at the same path (a shared
mount) and the same installation of rag.  Ray Data (rather than hand-written scheduling) does
the distribution: batching, back-pressure, actor pools and placement are its job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ingest.pipeline import FileParser, IngestPipeline, Prepared, document_key, mark_problem, too_many_chunks
from rag.config import IngestSettings, Settings
from rag.embed import Embedder
from rag.store import DocumentInfo

INSTALL = "pip install 'ray[data]==2.60.0' (or `make setup`, which installs it)"
# Memory each parsing task reserves, so Ray starts no more parses on a node than it holds: the
# tokenizer's model, OCR's models and a page rendered at 200 dpi.  It also keeps Ray from fusing
# parsing into the embedding actors (it fuses stages that ask for the same resources).
PARSE_MEMORY = 1 << 30
FILES_PER_BLOCK = 8  # small blocks: a slow file holds up few others, and results come back early
# What the workers need of the settings; the rest (keys, passwords, the store's token) stays here.
_SECTIONS = {"embed", "chunk", "ingest"}


class ClusterError(RuntimeError):
    """Ray is missing, or the cluster cannot be reached; the message says what to do."""


@dataclass(frozen=True)
class Plan:
    """How the work is spread: embedding actors and what each takes."""

    cpus: float
    gpus: float
    embedders: int
    embedder_cpus: int
    embedder_gpus: float

    @property
    def device(self) -> str | None:
        """The embedder's device on an actor: the GPU Ray gave it, else the configured one."""
        return "cuda" if self.embedder_gpus > 0 else None

    def describe(self) -> str:
        gpus = f", {self.embedder_gpus:g} GPU" if self.embedder_gpus else ""
        return f"{self.embedders} embedding actor(s) ({self.embedder_cpus} CPU{gpus} each) on {self.cpus:g} CPUs"


def plan(ingest: IngestSettings, cpus: float, gpus: float) -> Plan:
    """Embedders: one per GPU where there are GPUs, otherwise one per `ray_embedder_cpus` CPUs with
    one CPU kept for the parsing tasks; settings win."""
    per_gpu = ingest.ray_embedder_gpus if ingest.ray_embedder_gpus is not None else (1.0 if gpus else 0.0)
    if ingest.ray_embedders:
        embedders = ingest.ray_embedders
    elif per_gpu:
        embedders = max(1, int(gpus / per_gpu))
    else:
        embedders = max(1, int((cpus - 1) // ingest.ray_embedder_cpus))
    if embedders * per_gpu > gpus:  # an actor Ray cannot place would be waited for forever
        raise ClusterError(
            f"{embedders} embedding actor(s) of {per_gpu:g} GPU need more GPUs than the cluster's {gpus:g}; "
            "lower ingest.ray_embedders or ray_embedder_gpus"
        )
    if embedders * ingest.ray_embedder_cpus > cpus - 1:  # the actors hold their CPUs: parsing would wait forever
        raise ClusterError(
            f"{embedders} embedding actor(s) of {ingest.ray_embedder_cpus} CPU leave no CPU for parsing on a "
            f"cluster of {cpus:g}; lower ingest.ray_embedders or ray_embedder_cpus, or add CPUs (a local runtime's "
            "ingest.ray_cpus may be more than the machine's cores)"
        )
    return Plan(cpus, gpus, embedders, ingest.ray_embedder_cpus, per_gpu)


def connect(ingest: IngestSettings) -> bool:
    """Start a local Ray runtime ("local") or join a cluster; True when this call did it (and the
    caller shuts it down).  A local runtime gets a random token of its own, never written to disk,
    so nothing without it can submit work to it."""
    where = ingest.ray or "local"
    try:
        import ray
    except ImportError as exc:
        raise ClusterError(f"ingest.ray is set but Ray is not installed: {INSTALL}") from exc
    if ray.is_initialized():
        return False
    if where == "local":
        _local_environment()
    else:
        _cluster_environment()
    if where not in ("local", "auto"):
        _check_reachable(where)
    try:
        if where == "local":
            ray.init(
                address="local",
                num_cpus=ingest.ray_cpus or os.cpu_count(),
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            ray.init(address=where, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        hint = (
            "start one with `ray start --head`, or check the address; a cluster started with RAY_AUTH_MODE=token "
            "needs its token here too (~/.ray/auth_token or RAY_AUTH_TOKEN)"
            if where != "local"
            else "see the error"
        )
        raise ClusterError(f"cannot start or reach Ray at {where!r}: {str(exc).rstrip('.')}; {hint}") from exc
    return True


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an address that does not answer for minutes, printing warnings; say so at once."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"ingest.ray = {address!r} is not 'local', 'auto' or an address like head:6379 / ray://head:10001"
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ClusterError(
            f"cannot reach the Ray cluster at {address}: {reason}; start it with `ray start --head` "
            "on the head node, or check the address and port"
        ) from exc


def _local_environment() -> None:
    """A token of our own for the local runtime, unless the user chose an auth mode, and a quiet
    C++ core: it logs warnings meant for Ray's developers over our progress display (its
    processes' logs are kept under /tmp/ray/session_*/logs)."""
    from ray._raylet import Config

    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    Config.initialize("")  # Ray read its settings from the environment when imported: again, now


def _cluster_environment() -> None:
    """Use the cluster's token when this machine has one: Ray only sends it in token mode, and a
    cluster started with RAY_AUTH_MODE=token refuses a driver that does not."""
    from ray._raylet import Config

    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")


class ClusterSource:
    """The pipeline's source of prepared files when ingest.ray is set: examined here, parsed and
    embedded on the cluster, handed back in the order the files were found."""

    def __init__(self, pipe: IngestPipeline, files: list[Path], known: dict[str, DocumentInfo]) -> None:
        self.pipe = pipe
        self.files = files
        self.known = known
        self.started = False

    def __iter__(self) -> Iterator[Prepared]:
        todo: dict[str, tuple[Prepared, Path]] = {}
        copies: list[tuple[Prepared, str]] = []  # a file whose bytes an earlier file of this run has
        first_of: dict[str, str] = {}  # sha256 -> the key of the first file with those bytes
        for path in self.files:
            found, data = self.pipe.examine(path, self.known.get(document_key(path)))
            del data  # read for its hash; the worker reads it again where it runs
            if found.kind != "content" or self._stored_twin(found):
                yield found  # unchanged, touched, a problem, or a copy of a stored file: done here
            elif found.sha256 in first_of:
                copies.append((found, first_of[found.sha256]))
            else:
                first_of[found.sha256] = found.path
                todo[found.path] = (found, path)
        outcome: dict[str, Prepared] = {}
        for item in self._stream(todo):
            outcome[item.path] = item
            yield item
        for found, original in copies:
            yield _copy_of(found, outcome[original])

    def _stored_twin(self, found: Prepared) -> bool:
        """A file whose bytes the base already holds becomes a duplicate in the writer, unparsed."""
        return self.pipe.kb.twin(found.sha256, self.pipe.fingerprint, found.path) is not None

    def _stream(self, todo: dict[str, tuple[Prepared, Path]]) -> Iterator[Prepared]:
        if not todo:
            return
        self.started = connect(self.pipe.settings.ingest)
        import ray

        resources = ray.cluster_resources()
        spread = plan(self.pipe.settings.ingest, resources.get("CPU", 1.0), resources.get("GPU", 0.0))
        self.pipe.progress.note(f"Ray: {len(todo)} file(s) to parse and embed; {spread.describe()}")
        rows = [{"key": key, "path": os.fsencode(path), "sha256": f.sha256} for key, (f, path) in todo.items()]
        for key, found in _regroup(_dataset(rows, self._job(), spread)):
            examined, _ = todo[key]
            if found.vectors is not None:
                self.pipe.progress.chunks_done(len(found.chunks))
            yield _merged(examined, found)

    def _job(self) -> dict[str, Any]:
        settings = self.pipe.settings.model_dump(mode="json", include=_SECTIONS)
        return {"settings": settings, "max_text_bytes": self.pipe.kb.max_text_bytes, "backend": self.pipe.kb.backend}

    def stop(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def _merged(examined: Prepared, parsed: Prepared) -> Prepared:
    """The driver's record of a file (its base entry, size and time) with what the worker made of
    it.  The hash is the worker's: it describes the bytes that were parsed, should the file have
    changed in between."""
    parsed.existing, parsed.size, parsed.mtime = examined.existing, examined.size, examined.mtime
    return parsed


def _copy_of(found: Prepared, original: Prepared) -> Prepared:
    """A second file with the bytes of one sent to the cluster: a duplicate of it when it was
    stored (the writer finds the twin), or the same problem, since the same bytes parse the same."""
    if original.problem is None and original.sha256 == found.sha256:
        return found
    if original.problem is None:  # the original changed between its hashing here and its parsing there
        reason = "a file with the same bytes changed while this ingest ran; run it again"
        return mark_problem(found.path, found.existing, "failed", reason, found)
    return mark_problem(found.path, found.existing, original.problem.status, original.problem.reason, found)


def _dataset(rows: list[dict[str, Any]], job: dict[str, Any], spread: Plan) -> Any:
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-run plans and timings: not the user's concern
    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = False
    context.execution_options.preserve_order = True  # the writer regroups rows into files
    context.enable_progress_bars = False  # the ingest's own progress shows files and chunks
    blocks = max(1, -(-len(rows) // FILES_PER_BLOCK))
    parsed = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        parse_files,
        batch_size=1,
        fn_kwargs={"job": job},
        batch_format="numpy",
        num_cpus=1,
        memory=PARSE_MEMORY,
    )
    return parsed.map_batches(
        Embedding,
        batch_size=256,
        fn_constructor_kwargs={"job": job, "threads": spread.embedder_cpus, "device": spread.device},
        compute=ray.data.ActorPoolStrategy(size=spread.embedders),
        num_cpus=spread.embedder_cpus,
        num_gpus=spread.embedder_gpus,
        batch_format="numpy",
    )


def _regroup(dataset: Any) -> Iterator[tuple[str, Prepared]]:
    """Rows (one per chunk, the file's record on its first row) back into files, with vectors."""
    current: Prepared | None = None
    parts: list[np.ndarray] = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i, key in enumerate(batch["key"]):
            item = batch["item"][i]
            if item is not None:
                current, parts = item, []
                if not current.chunks:
                    yield str(key), current
                    continue
            assert current is not None, "the rows of a file come back in order"
            parts.append(batch["vector"][i])
            if len(parts) == len(current.chunks):
                current.vectors = np.stack(parts).astype(np.float32, copy=False)
                yield str(key), current


# ---- on the workers ------------------------------------------------------------------------------
_parsers: dict[str, FileParser] = {}  # per worker process: its model (for the tokenizer) loads once


def _settings(job: dict[str, Any]) -> Settings:
    return Settings.model_validate(job["settings"])


def _parser(job: dict[str, Any]) -> FileParser:
    key = json.dumps(job, sort_keys=True)
    if key not in _parsers:
        settings = _settings(job)
        embed = settings.embed.model_copy(update={"device": "cpu"})  # only its tokenizer is used here
        _parsers[key] = FileParser(settings, Embedder(embed), job["max_text_bytes"], job["backend"])
    return _parsers[key]


def parse_files(batch: dict[str, np.ndarray], job: dict[str, Any]) -> dict[str, list[Any]]:
    """A Ray task: files into rows, one per chunk (a problem file gets one row and no chunk);
    the file's record rides on its first row."""
    parser = _parser(job)
    rows: dict[str, list[Any]] = {"key": [], "text": [], "item": []}
    for key, raw in zip(batch["key"], batch["path"], strict=True):
        found = parse_one(parser, str(key), Path(os.fsdecode(bytes(raw))))
        texts = [parser.indexed(c) for c in found.chunks] or [""]
        for i, text in enumerate(texts):
            rows["key"].append(str(key))
            rows["text"].append(text)
            rows["item"].append(found if i == 0 else None)
    return rows


def parse_one(parser: FileParser, key: str, path: Path) -> Prepared:
    """Read, hash and parse one file where the task runs; a file over ingest.max_chunks_per_file
    is refused here, before anything is spent embedding it."""
    found = Prepared(key, None, "content")
    try:
        data = path.read_bytes()
    except OSError as exc:
        reason = f"cannot read on the Ray worker: {exc.strerror or exc} (every node needs the documents at this path)"
        return mark_problem(key, None, "failed", reason, found)
    found.sha256 = hashlib.sha256(data).hexdigest()
    found = parser.parse(found, path, data)
    limit = parser.settings.ingest.max_chunks_per_file
    if found.problem is None and limit is not None and len(found.chunks) > limit:
        n, found.chunks, found.tokens = len(found.chunks), [], []
        return mark_problem(key, None, "failed", too_many_chunks(n, limit), found)
    return found


class Embedding:
    """A Ray actor: one embedding model, fed batches of chunk rows; rows of problem files pass
    through with a zero vector the writer never reads."""

    def __init__(self, job: dict[str, Any], threads: int, device: str | None) -> None:
        import torch

        torch.set_num_threads(threads)
        embed = _settings(job).embed
        self.embedder = Embedder(embed.model_copy(update={"device": device}) if device else embed)
        self.dimension = self.embedder.identity.dimension

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch.pop("text")
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        rows = [i for i, text in enumerate(texts) if text]
        if rows:
            vectors[rows] = self.embedder.encode_passages([str(texts[i]) for i in rows])
        batch["vector"] = vectors
        return batch
