"""One typed Settings object: `rag.toml` (or `--config PATH`) overridden by `RAG_*` env vars.

Built once by the CLI (or a test) with :func:`load_settings` and passed down; no module reads
the environment at import time.  Nested sections are overridden with a double underscore:
``RAG_EMBED__BATCH_SIZE=64``, ``RAG_CHUNK__SIZE=200``; top-level fields directly:
``RAG_DATA_DIR=/srv/rag``.
"""

from __future__ import annotations

import os
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
    include_hidden: bool = Field(False, description="also ingest dot-files and dot-folders")
    dense_index: Literal["flat", "hnsw"] | None = Field(
        None,
        description="FAISS index of the vectors: flat (exact; fast enough to ~1M chunks) or hnsw (approximate, "
        "for larger bases); unset: a new base is flat and an existing one keeps its kind. Set on an existing "
        "base, its next ingest converts it",
    )


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
    rerank_model: str | None = Field(None, description="cross-encoder (hub id or local folder); off when unset")
    rerank_candidates: int = Field(20, ge=1, description="fused passages the cross-encoder reorders")
    min_similarity: float = Field(0.35, description="relevance gate: cosine similarity a passage must reach ...")
    min_coverage: float = Field(0.6, ge=0, le=1, description="... or the share of the question's words it must contain")
    min_similarity_zh: float | None = Field(
        None,
        description="the cosine gate for Chinese questions; off by default because the default embedder "
        "is English-only (its Chinese similarities are noise): set it when embed.model is multilingual",
    )


class LLMSettings(_Section):
    backend: Literal["local", "openai"] = Field("local", description="in-process transformers, or a vLLM server")
    model: str = Field(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="local: hub id, folder or packaged default; openai: the served model or LoRA adapter name",
    )
    adapter: str | None = Field(None, description="local backend: a peft LoRA folder to apply")
    base_url: str = Field("http://127.0.0.1:8000/v1", description="openai backend: the server's /v1 URL")
    api_key: str = Field("EMPTY", description="openai backend: API key (vLLM accepts anything by default)")
    timeout_s: float = Field(120.0, gt=0, description="openai backend: per-request timeout")
    max_retries: int = Field(1, ge=0)
    temperature: float = Field(0.0, ge=0, description="0 = greedy (reproducible)")
    max_new_tokens: int = Field(256, ge=1)
    condense_history: bool = Field(True, description="rewrite follow-ups into standalone questions")


class UISettings(_Section):
    host: str = Field("127.0.0.1", description="address `rag ui` listens on; set a password before exposing it")
    port: int = Field(8501, ge=1, le=65535, description="port `rag ui` listens on")
    max_upload_mb: float = Field(50.0, gt=0, description="largest file the web UI accepts for upload, in MB")
    password: SecretStr | None = Field(
        None, description="asked for before the web UI opens; set it (or RAG_UI__PASSWORD) when not on 127.0.0.1"
    )


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
    retrieve: RetrieveSettings = Field(default_factory=RetrieveSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    ui: UISettings = Field(default_factory=UISettings)
    cache_dir: Path = Field(
        default_factory=lambda: _default_cache_dir(),
        description="converted models and other re-creatable files",
    )

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _expand(cls, v: Path) -> Path:
        return Path(v).expanduser()

    def kb_dir(self, name: str) -> Path:
        return self.data_dir / "kb" / name


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

    try:
        built = _FileSettings(**overrides)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        problems = "\n".join(f"  {_explain(error)}" for error in exc.errors())
        raise ConfigError(f"invalid settings{where}:\n{problems}") from exc
    except Exception as exc:  # a TOML syntax error
        raise ConfigError(f"invalid settings in {path}:\n  {exc}") from exc
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
        return f"{key}{source}: not a setting{_did_you_mean(loc)}"
    secret = any(word in loc[-1] for word in ("password", "key"))
    value = "" if isinstance(error.get("input"), dict) else " = ***" if secret else f" = {error['input']!r}"
    message = error["msg"].removeprefix("Value error, ")  # our own validators' text, as written
    return f"{key}{value}{source}: {message}"


def _did_you_mean(loc: list[str]) -> str:
    import difflib

    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return f"; did you mean {'.'.join([*loc[:-1], close[0]])!r}?" if close else ""
