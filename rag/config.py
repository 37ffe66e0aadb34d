"""One typed Settings object: `rag.toml` (or `--config PATH`) overridden by `RAG_*` env vars.

Built once by the CLI (or a test) with :func:`load_settings` and passed down; no module reads
the environment at import time.  Nested sections are overridden with a double underscore:
``RAG_EMBED__BATCH_SIZE=64``, ``RAG_CHUNK__SIZE=200``; top-level fields directly:
``RAG_DATA_DIR=/srv/rag``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_CONFIG_NAME = "rag.toml"


class _Section(BaseModel):
    # A typo in rag.toml ("chunk.sise") should be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid")


class EmbedSettings(_Section):
    model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2",
        description="sentence-transformers model: a hub id, a local folder, or a packaged default",
    )
    batch_size: int = Field(32, ge=1, description="texts per encode call")
    device: str = Field("cpu", description="torch device for the embedder")
    normalize: bool = Field(True, description="L2-normalize vectors (inner product = cosine)")
    query_prefix: str = Field("", description="prepended to queries (e5 models want 'query: ')")
    passage_prefix: str = Field("", description="prepended to chunks (e5 models want 'passage: ')")


class ChunkSettings(_Section):
    method: Literal["recursive", "page"] = Field(
        "recursive",
        description="recursive: split pages into chunks of `size` tokens; page: one chunk per page (a whole "
        "text file), which the embedder reads only up to its max length while BM25 indexes all of it "
        "(for corpora of short documents, and how published BEIR numbers are measured)",
    )
    size: int = Field(250, ge=16, description="chunk size in embedding-model tokens")
    overlap: int = Field(32, ge=0, description="overlap between neighbouring chunks, in tokens")
    context: bool = Field(
        True,
        description="embed and BM25-index each chunk with its document's title and the nearest heading above "
        "it (a statement's rows with the statement's name); the chunk's shown and cited text is unchanged",
    )

    @field_validator("overlap")
    @classmethod
    def _overlap_below_size(cls, v: int, info: Any) -> int:
        size = info.data.get("size", 250)
        if v >= size:
            raise ValueError(f"chunk.overlap ({v}) must be smaller than chunk.size ({size})")
        return v


class IngestSettings(_Section):
    commit_interval_s: float = Field(
        30.0,
        ge=0,
        description="commit progress at most this often during a long ingest (0 = after every batch)",
    )
    max_file_mb: float = Field(200.0, gt=0, description="files larger than this are refused")
    max_unpacked_mb: float = Field(
        512.0,
        gt=0,
        description="zip-based files (.docx, .xlsx) that unpack to more than this are refused before parsing",
    )
    max_compression_ratio: float = Field(
        100.0,
        gt=1,
        description="... as are those with a part over 1 MB that unpacks to more than this many times its packed "
        "size (decompression bombs; real Office files measured well under 20)",
    )
    max_chunks_per_file: int | None = Field(
        20_000,
        ge=1,
        description="a file that makes more chunks than this is refused, with an estimate of what embedding it "
        "would cost (20,000 chunks take about 17 min on two CPU cores); unset for no limit",
    )
    include_hidden: bool = Field(False, description="also ingest dot-files and dot-folders")
    worker_memory_mb: float | None = Field(
        4096.0,
        gt=0,
        description="ingests started from the web UI run in a worker process capped at this much private memory, "
        "so a runaway file fails instead of taking the UI down; unset for no cap",
    )
    dense_index: Literal["flat", "hnsw"] | None = Field(
        None,
        description="FAISS index of the vectors: flat (exact; fast enough to ~1M chunks) or hnsw (approximate, "
        "for larger bases); unset: a new base is flat and an existing one keeps its kind. Set on an existing "
        "base, its next ingest converts it",
    )
    ocr: Literal["auto", "off", "always"] = Field(
        "auto",
        description="read page images with OCR (RapidOCR): auto = PDF pages without a text layer, and image "
        "files; always = every PDF page too (a text layer that is garbage); off = never (scans come out empty)",
    )
    ocr_dpi: int = Field(
        200,
        ge=72,
        le=600,
        description="resolution PDF pages are rendered at for OCR (150 dpi misread whole lines; 200 read every "
        "line of our test scans; more costs time)",
    )
    ocr_threads: int = Field(
        1,
        ge=1,
        description="threads per OCR page (on 2 cores 1 thread was faster than 2: 4-6 s against 6-9 s a page, "
        "since embedding runs beside it)",
    )
    ocr_upside_down_lines: bool = Field(
        False,
        description="also read text lines printed upside down (RapidOCR's line-angle classifier). Off: on the "
        "real PDFs of bench/ocr.py the classifier turned upright lines over and they came out as garbage",
    )
    ocr_min_text_chars: int = Field(
        20,
        ge=0,
        description="with ocr = auto, a PDF page whose text layer has fewer characters than this is OCRed",
    )
    ocr_low_confidence: float = Field(
        0.8,
        ge=0,
        le=1,
        description="`rag kb show` flags OCR pages whose mean recognition score is below this",
    )
    ray: str | None = Field(
        None,
        description="parse and embed on Ray (`rag ingest --ray`): 'local' starts a Ray runtime on this machine for "
        "the ingest; 'auto' joins the cluster this machine belongs to (`ray start`); or a cluster's address "
        "(ray://head:10001, head:6379). Unset: no Ray",
    )
    ray_cpus: int | None = Field(
        None, ge=1, description="CPUs of the local Ray runtime (default: all of this machine's)"
    )
    ray_embedders: int | None = Field(
        None,
        ge=1,
        description="Ray embedding actors, one model each (default: one per GPU when the cluster has GPUs, "
        "otherwise one per ray_embedder_cpus CPUs, keeping one CPU for parsing)",
    )
    ray_embedder_cpus: int = Field(1, ge=1, description="CPUs (torch threads) each Ray embedding actor takes")
    ray_embedder_gpus: float | None = Field(
        None,
        ge=0,
        description="GPUs each Ray embedding actor takes (default: 1 when the cluster has GPUs, else 0); a fraction "
        "packs several actors on one GPU",
    )


class StoreSettings(_Section):
    backend: Literal["local", "milvus"] = Field(
        "local",
        description="where knowledge bases live: local (a folder per base under data_dir: SQLite + FAISS + BM25) "
        "or milvus (collections in the Milvus at store.uri, shared by every process that points there)",
    )
    uri: str = Field(
        "milvus.db",
        description="milvus: a path is Milvus Lite (an embedded engine for one machine; relative to data_dir), "
        "http(s)://host:19530 a Milvus Standalone or Distributed server",
    )
    token: SecretStr | None = Field(None, description="milvus: 'user:password' or an API key, for a server")
    db_name: str | None = Field(None, description="milvus: the database on the server (default: its default)")


class RetrieveSettings(_Section):
    mode: Literal["hybrid", "dense", "bm25"] = Field("hybrid", description="which retrievers run")
    top_k: int = Field(5, ge=1, description="passages retrieved; those that clear the gate go to the LLM")
    # Defaults chosen on SciFact train and NFCorpus dev (README, "Evaluation"), with BM25 windows:
    # min-max fusion over every candidate's true scores beat z-score by 0.0075 / 0.0015 nDCG@10
    # (z-score had beaten RRF by 0.017 on SciFact); 100 candidates beat 50 on NFCorpus by 0.006.
    candidates: int = Field(100, ge=1, description="depth of each retriever before fusion")
    fusion: Literal["minmax", "zscore", "rrf"] = Field(
        "minmax",
        description="normalized-score fusion (min-max onto [0, 1], or z-score) or reciprocal-rank fusion",
    )
    rrf_k: int = Field(60, ge=1, description="the k in 1/(k + rank)")
    hnsw_ef_search: int = Field(
        128, ge=1, description="hnsw bases: vectors explored per query (higher: closer to exact, slower)"
    )
    dense_weight: float = Field(1.0, ge=0)
    bm25_weight: float = Field(1.0, ge=0)
    dense_weight_zh: float | None = Field(
        0.0,
        ge=0,
        description="dense_weight for Chinese questions; 0 by default because the default embedder is "
        "English-only (hybrid fell from 0.986 to 0.867 nDCG@10 on CMRC2018 with it): unset it, or set it, "
        "when embed.model is multilingual",
    )
    max_per_page: int | None = Field(
        1,
        ge=1,
        description="passages of one PDF page (or image) among the top_k, the rest going to other pages; unset: no "
        "limit. 1 found an evidence page in the top 5 for 0.530 of FinanceBench dev's questions against 0.446 "
        "unlimited (a page's several chunks had taken 30% of the places)",
    )
    expansions: list[str] = Field(
        default_factory=lambda: ["finance"],
        description="lexicons that add the documents' words to a question's (built-in: finance; or a TOML "
        "file's path); [] for none. The question as asked is what the gate and the LLM see",
    )
    expand_dense: bool = Field(
        False,
        description="the dense retriever embeds the expanded question too (FinanceBench dev: the same hit@5 "
        "in a question's own filing, 0.024 lower across all 49)",
    )
    # Pseudo-relevance feedback, chosen on NFCorpus dev (README, "Pseudo-relevance feedback"): it
    # helps where many passages answer each question and costs where one does (SciFact train).
    feedback_passages: int = Field(
        0,
        ge=0,
        description="dense search again with the question's vector moved toward the first N fused passages' "
        "(Rocchio); 0: off. NFCorpus dev +0.008 to +0.010 nDCG@10, SciFact train -0.005 to -0.009: for "
        "collections where many passages answer each question",
    )
    feedback_weight: float = Field(
        2.0, ge=0, description="how far: the question's vector plus this times the passages' mean vector"
    )
    rerank_model: str | None = Field(None, description="cross-encoder (hub id or local folder); off when unset")
    rerank_candidates: int = Field(
        20, ge=1, description="fused passages the cross-encoder reorders (a deeper top_k gets the rest as fused)"
    )
    rerank_weight: float = Field(
        1.0,
        ge=0,
        le=1,
        description="1: order by the cross-encoder alone; below 1: that weight of its score plus the rest of "
        "the first stage's fused score (scaled onto [0, 1])",
    )
    answer_gate: Literal["auto", "relevance", "reranker", "both"] = Field(
        "auto",
        description='what lets a passage reach the LLM (else "not found"): the relevance gate below, the '
        "reranker's score against answer_threshold, or both; auto: the reranker when it was tuned with "
        "`rag tune reranker` (it carries a calibrated threshold), else relevance",
    )
    answer_threshold: float | None = Field(
        None, description="the reranker score a passage needs under the reranker gate; unset: the tuned model's own"
    )
    min_similarity: float = Field(
        0.35, ge=-1, le=1, description="relevance gate: cosine similarity a passage must reach ..."
    )
    min_coverage: float = Field(0.6, ge=0, le=1, description="... or the share of the question's words it must contain")
    min_similarity_zh: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="the cosine gate for Chinese questions; off by default because the default embedder "
        "is English-only (its Chinese similarities are noise): set it when embed.model is multilingual",
    )

    @field_validator("expansions")
    @classmethod
    def _lexicons_load(cls, names: list[str]) -> list[str]:
        """Read now, so a missing or broken lexicon stops `rag` at start with its file and reason,
        not the first question."""
        from rag.expansion import load_lexicon

        load_lexicon(names)
        return names


class LLMSettings(_Section):
    backend: Literal["local", "openai"] = Field("local", description="in-process transformers, or a vLLM server")
    model: str = Field(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="local: hub id, folder or packaged default; openai: the served model or LoRA adapter name",
    )
    adapter: str | None = Field(None, description="local backend: a peft LoRA folder to apply (transformers engine)")
    engine: Literal["auto", "llamacpp", "transformers"] = Field(
        "auto",
        description="local backend: llama.cpp runs GGUF models (auto: for a .gguf file and the packaged default, "
        "unless llm.adapter is set); transformers runs hub ids, folders and peft adapters",
    )
    gguf_type: Literal["Q8_0", "Q4_0", "packaged"] = Field(
        "Q8_0",
        description="llama.cpp: the packaged default (Q4_1, slow to read a prompt) is re-quantized once into "
        "cache_dir: Q8_0 writes what transformers writes; Q4_0 is a little faster and garbles Chinese",
    )
    threads: int = Field(0, ge=0, description="llama.cpp threads decoding; 0 = half the CPU cores, at least 1")
    prompt_threads: int = Field(0, ge=0, description="llama.cpp threads reading the prompt; 0 = every CPU core")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai backend: the server's /v1 URL")
    api_key: str = Field("EMPTY", description="openai backend: API key (vLLM accepts anything by default)")
    timeout_s: float = Field(
        120.0,
        gt=0,
        description="the most time one answer may take, both backends: from the first LLM call (the follow-up "
        "rewrite included) to the last token, retries included; the text that had arrived is kept",
    )
    max_retries: int = Field(
        1, ge=0, description="openai backend: retries of a failed request (refused, 5xx, 429), within llm.timeout_s"
    )
    temperature: float = Field(0.0, ge=0, description="0 = greedy (reproducible)")
    max_new_tokens: int = Field(256, ge=1)
    condense_history: bool = Field(True, description="rewrite follow-ups into standalone questions")
    extractive_fallback: bool = Field(
        True,
        description="an answer that writes the question back, copies the passages out, states a figure no "
        "passage holds, has half or more words none uses, or stutters is replaced by the passages' sentences or "
        "table cells that answer it (marked as extracted), and one that repeats itself is cut there",
    )


class UISettings(_Section):
    host: str = Field("127.0.0.1", description="address `rag ui` listens on; set a password before exposing it")
    port: int = Field(8501, ge=1, le=65535, description="port `rag ui` listens on")
    max_upload_mb: float = Field(50.0, gt=0, description="largest file the web UI accepts for upload, in MB")
    password: SecretStr | None = Field(
        None, description="asked for before the web UI opens; set it (or RAG_UI__PASSWORD) when not on 127.0.0.1"
    )


class APISettings(_Section):
    host: str = Field(
        "127.0.0.1",
        description="address `rag api` listens on; any other than loopback needs API keys (`rag keys create`)",
    )
    port: int = Field(8080, ge=1, le=65535, description="port `rag api` listens on")
    keys_file: Path | None = Field(
        None, description="where API keys are kept, hashed (default: <data_dir>/api/keys.json)"
    )
    max_request_mb: float = Field(1.0, gt=0, description="largest request body other than an upload, in MB")
    max_upload_mb: float = Field(50.0, gt=0, description="largest file an upload may hold, in MB")
    max_upload_files: int = Field(20, ge=1, description="files one upload request may hold")
    max_queued_jobs: int = Field(
        8, ge=1, description="ingest jobs waiting behind the running one, per knowledge base; more get 429"
    )
    rate_limit_per_minute: int = Field(
        600, ge=0, description="requests per minute for each key (or each address without one); 0: no limit"
    )
    answer_slots: int = Field(
        4, ge=1, description="questions answered at once (chat, MCP ask); others wait for a slot ..."
    )
    queue_wait_s: float = Field(30.0, gt=0, description="... this long, then get 429 with Retry-After")
    busy_wait_s: float = Field(
        600.0,
        ge=0,
        description="an ingest job whose base another process is writing (`rag ingest`) waits this long for it",
    )
    keep_alive_s: float = Field(5.0, gt=0, description="idle HTTP keep-alive connections are closed after this")
    max_connections: int = Field(200, ge=1, description="open connections at once; more get 503")

    @field_validator("keys_file")
    @classmethod
    def _expand_keys_file(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(v).expanduser()


class Settings(BaseSettings):
    """Everything the product can be told, with defaults that work with no file at all."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(
        default_factory=lambda: _default_data_dir(),
        description="where knowledge bases live (<data_dir>/kb/<name>/)",
    )
    default_kb: str = Field("default", description="knowledge base used when --kb is not given")
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    chunk: ChunkSettings = Field(default_factory=ChunkSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    retrieve: RetrieveSettings = Field(default_factory=RetrieveSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    ui: UISettings = Field(default_factory=UISettings)
    api: APISettings = Field(default_factory=APISettings)
    cache_dir: Path = Field(
        default_factory=lambda: _default_cache_dir(),
        description="converted models and other re-creatable files",
    )

    @field_validator("data_dir", "cache_dir", mode="before")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        # Path("") is ".": an empty RAG_DATA_DIR would quietly put knowledge bases in whatever
        # folder the command runs from.
        if isinstance(v, str) and not v.strip():
            raise ValueError("is empty; give a folder, or leave it unset for the default")
        return v

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    @field_validator("default_kb")
    @classmethod
    def _a_kb_name(cls, v: str) -> str:
        return check_kb_name(v)

    def kb_name(self, given: str | None) -> str:
        """The base a command works on: the one named (`--kb ""` is not "none given"), else default_kb."""
        return check_kb_name(self.default_kb if given is None else given)

    @property
    def keys_file(self) -> Path:
        """Where the API keys are kept: api.keys_file, else <data_dir>/api/keys.json."""
        return self.api.keys_file or self.data_dir / "api" / "keys.json"

    def kb_dir(self, name: str) -> Path:
        """The folder of knowledge base `name`: always directly inside <data_dir>/kb, whatever
        the name (every entry point turns names into folders here, and only here)."""
        check_kb_name(name)
        return self.data_dir / "kb" / name


# A name is a folder name: never a path ("/", ".."), never hidden, never a surprise for a shell.
KB_NAME_RULE = "letters, digits, '-', '_' and '.', starting with a letter or digit, at most 64 characters"
_KB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class InvalidKBName(ValueError):
    """A knowledge-base name that could not be a plain folder inside the data directory."""


def check_kb_name(name: str) -> str:
    """`name` if it is a valid knowledge-base name; else InvalidKBName, with the rule."""
    if not _KB_NAME.fullmatch(name):
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise InvalidKBName(f"{shown!r} is not a knowledge-base name: use {KB_NAME_RULE}")
    return name


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "rag"


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "rag"


class ConfigError(ValueError):
    """The config file or environment holds something invalid; the message says what."""


def find_config(explicit: Path | None) -> Path | None:
    """`--config PATH` wins; otherwise `rag.toml` in the current folder if there is one."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"config file not found: {explicit}")
        return explicit
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Build the Settings: init overrides > RAG_* env > config file > defaults."""
    path = find_config(config)

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if path is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
            return tuple(sources)

    where = f" in {path}" if path else ""
    unknown = _unknown_env_vars(os.environ)
    try:
        built = _FileSettings(**overrides)
    except ValidationError as exc:
        errors = [e for e in exc.errors() if not _already_flagged(e, unknown)]
        problems = "\n".join(f"  {line}" for line in [*unknown, *map(_explain, errors)])
        raise ConfigError(f"invalid settings{where}:\n{problems}") from exc
    except Exception as exc:  # a TOML syntax error
        raise ConfigError(f"invalid settings in {path}:\n  {exc}") from exc
    if unknown:
        raise ConfigError("invalid settings:\n" + "\n".join(f"  {line}" for line in unknown))
    # Hand back the plain type so nothing downstream sees the throwaway subclass.
    return Settings.model_construct(**dict(built))


def _explain(error: Any) -> str:
    """One line per problem, as the user wrote it: the key, the value, where it came from, and what
    is wrong, with a guess for a misspelt key (pydantic's own text names an internal class and a
    documentation URL instead)."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    env = "RAG_" + "__".join(loc).upper()
    source = f" (from {env})" if env in {k.upper() for k in os.environ} else ""
    if error["type"] == "extra_forbidden":
        close = _closest(loc)
        return f"{key}{source}: not a setting" + (f"; did you mean {'.'.join(close)!r}?" if close else "")
    secret = any(word in loc[-1] for word in ("password", "key"))
    value = "" if isinstance(error.get("input"), dict) else " = ***" if secret else f" = {error['input']!r}"
    message = error["msg"].removeprefix("Value error, ")  # our own validators' text, as written
    return f"{key}{value}{source}: {message}"


def _closest(loc: list[str]) -> list[str] | None:
    """The setting a misspelt key most likely meant (each part matched in turn), or None."""
    import difflib

    model: Any = Settings
    fixed: list[str] = []
    for i, part in enumerate(loc):
        fields = getattr(model, "model_fields", {})
        name = part if part in fields else next(iter(difflib.get_close_matches(part, list(fields), n=1)), None)
        if name is None:
            return None
        fixed.append(name)
        annotation = fields[name].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if model is None and i < len(loc) - 1:
            return None
    return fixed if fixed != loc else None


def _already_flagged(error: Any, unknown: list[str]) -> bool:
    """pydantic also rejects an unknown key inside a known section: say it once."""
    env = "RAG_" + "__".join(str(part) for part in error["loc"]).upper()
    return error["type"] == "extra_forbidden" and any(line.upper().startswith(env + ":") for line in unknown)


def _unknown_env_vars(environ: Any) -> list[str]:
    """RAG_* variables that name no setting. pydantic-settings ignores them, so a misspelt
    section (RAG_CHUNKK__SIZE) would silently change nothing."""
    problems = []
    for key in sorted(environ):
        if not key.upper().startswith("RAG_"):
            continue
        loc = key[4:].lower().split("__")
        model: Any = Settings
        known = True
        for part in loc:
            fields = getattr(model, "model_fields", None)
            if not fields or part not in fields:
                known = False
                break
            annotation = fields[part].annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if not known:
            close = _closest(loc)
            guess = f"; did you mean {'RAG_' + '__'.join(close).upper()}?" if close else ""
            problems.append(f"{key}: not a setting{guess}")
    return problems


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: the addresses only this machine reaches (`rag ui` and
    `rag api` ask for a password or keys before they listen anywhere else)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
