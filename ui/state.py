"""What every page shares: this run's settings, models loaded once per process, knowledge-base
handles per browser session, the current knowledge base, and the generation watch.

Models are process-wide (`st.cache_resource`): loading the embedder takes seconds and every
session can share it.  Knowledge-base handles are per session: each holds its own SQLite
connection and reloads its indexes when another process commits a new generation, so a base
being written by `rag ingest` is only ever seen at its last committed generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

from rag.config import EmbedSettings, Settings, load_settings
from rag.store import Store, base_stamp, list_bases, open_store

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rag.embed import Embedder

SETTINGS_KEY = "_rag_settings"
CURRENT_KB_KEY = "current_kb"
WATCH_EVERY_S = 3.0


# ---- settings ------------------------------------------------------------------------------
def config_path(argv: Sequence[str]) -> Path | None:
    """`rag --config X ui` hands the path to this script as `-- --config X`."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def load(argv: Sequence[str]) -> Settings:
    """Read the settings at the start of every run (cheap), so edits to rag.toml apply on reload."""
    settings = load_settings(config_path(argv))
    st.session_state[SETTINGS_KEY] = settings
    return settings


def settings() -> Settings:
    """The settings app.py loaded for this run."""
    return st.session_state[SETTINGS_KEY]


# ---- models, once per process ------------------------------------------------------------
@st.cache_resource(show_spinner=False, max_entries=4)
def _embedder(embed_json: str) -> Embedder:
    from rag.embed import Embedder

    return Embedder(EmbedSettings.model_validate_json(embed_json))


def embedder(settings: Settings) -> Embedder:
    """The shared embedder, loaded on first use behind a spinner (imports take ~10 s cold)."""
    emb = _embedder(settings.embed.model_dump_json())
    with st.spinner("Loading the embedding model (first time only)…"):
        emb.model  # noqa: B018
    return emb


@st.cache_resource(show_spinner=False, max_entries=2)
def _local_chat_model(key: str, _settings: Settings) -> BaseChatModel:
    from rag.llm import make_chat_model

    return make_chat_model(_settings)


def chat_model_factory(settings: Settings) -> Callable[[], BaseChatModel]:
    """What QA calls on first need.  The local model is loaded once per process and only its
    temperature differs between sessions; an OpenAI client is cheap and made per question."""

    def make() -> BaseChatModel:
        from rag.llm import make_chat_model

        llm = settings.llm
        if llm.backend != "local":
            return make_chat_model(settings)
        key = llm.model_dump_json(exclude={"temperature"}) + str(settings.cache_dir)
        with st.spinner(f"Loading the language model {llm.model} (first question only)…"):
            model = _local_chat_model(key, settings)
        return model.model_copy(update={"temperature": llm.temperature})

    return make


# ---- knowledge bases -----------------------------------------------------------------------
def kb_names(settings: Settings) -> list[str]:
    """Bases whose creation has committed; one being created right now is not listed yet."""
    return list_bases(settings)


def current_kb(settings: Settings, names: list[str] | None = None) -> str | None:
    """The base this session works on, shared by the Chat and Knowledge bases pages."""
    names = kb_names(settings) if names is None else names
    chosen = st.session_state.get(CURRENT_KB_KEY)
    if chosen not in names:
        chosen = settings.default_kb if settings.default_kb in names else (names[0] if names else None)
        st.session_state[CURRENT_KB_KEY] = chosen
    return chosen


def set_current_kb(name: str | None) -> None:
    st.session_state[CURRENT_KB_KEY] = name


def kb_picker(names: list[str], current: str, key: str) -> None:
    """A select box for the current base.  Its value is set from the session's choice on every
    run, so a base chosen (or just created) on one page is the one shown on the other."""
    st.session_state[key] = current
    st.selectbox("Knowledge base", names, key=key, on_change=lambda: set_current_kb(st.session_state[key]))


def open_kb(settings: Settings, name: str) -> Store | None:
    """This session's handle on a base, or None if it does not exist (any more).

    A base deleted and re-created under the same name (by the CLI, say) is a new base: the
    handle is reopened rather than left pointing at the deleted one.
    """
    handles: dict[str, tuple[Any, Store]] = st.session_state.setdefault("_kb_handles", {})
    stamp = base_stamp(settings, name)
    cached = handles.get(name)
    if cached and cached[0] == stamp:
        return cached[1]
    if cached:
        forget_kb(settings, name)
    if stamp is None:
        return None
    kb = open_store(settings, name)
    handles[name] = (stamp, kb)
    return kb


def forget_kb(settings: Settings, name: str) -> None:
    """Close this session's handle (before deleting the base, or when it changed on disk)."""
    handles = st.session_state.setdefault("_kb_handles", {})
    cached = handles.pop(name, None)
    if cached:
        cached[1].close()


def mark_seen(name: str, generation: int | None) -> None:
    """Record the generation this session has shown, so its own commits do not count as news."""
    st.session_state.setdefault("_seen_generation", {})[name] = generation


@st.fragment(run_every=WATCH_EVERY_S)
def watch_generation(name: str) -> None:
    """Re-run the page when another process commits to the base (e.g. `rag ingest` from a shell),
    and show what the base holds now."""
    settings_ = settings()
    kb = open_kb(settings_, name)
    generation = kb.generation if kb else None
    seen = st.session_state.setdefault("_seen_generation", {})
    changed = name in seen and seen[name] != generation
    seen[name] = generation
    if changed:
        st.toast(f"Knowledge base **{name}** was updated; showing the new version.", icon=":material/sync:")
        st.rerun()
    if kb is None:
        st.caption("This knowledge base no longer exists.")
        return
    docs = kb.documents()
    ready = sum(1 for d in docs if d.status in ("ok", "duplicate"))
    st.caption(f"{ready} document{'s' * (ready != 1)} · {kb.chunk_count():,} passages · version {generation}")


# ---- messages that survive the rerun after an action ----------------------------------------
FLASH_KEY = "_flash"
_FLASH_ICONS = {"success": ":material/check_circle:", "error": ":material/error:", "info": ":material/info:"}


def flash(kind: str, text: str) -> None:
    """Queue a message for the next run: actions end with st.rerun() so every table is fresh."""
    st.session_state.setdefault(FLASH_KEY, []).append((kind, text))


def show_flash() -> None:
    for kind, text in st.session_state.pop(FLASH_KEY, []):
        getattr(st, kind)(text, icon=_FLASH_ICONS.get(kind))


# ---- display helpers -----------------------------------------------------------------------
def human_size(n: float | None) -> str:
    if n is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def when(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp)) if timestamp else ""


CSS = """
<style>
.block-container {padding-top: 2.2rem; max-width: 1100px;}
a.rag-cite {text-decoration: none; font-weight: 600; font-size: .8em; vertical-align: super;
  padding: 0 .25em; margin: 0 .05em; border-radius: .35em; background: rgba(37,99,235,.12); color: #1d4ed8;}
a.rag-cite:hover {background: rgba(37,99,235,.25);}
.rag-cursor {color: #2563eb; animation: rag-blink 1s steps(1) infinite;}
@keyframes rag-blink {50% {opacity: 0;}}
.rag-src-head {display: flex; gap: .6rem; align-items: baseline; flex-wrap: wrap; margin-bottom: .35rem;}
.rag-src-n {font-weight: 700; color: #1d4ed8; background: rgba(37,99,235,.12); border-radius: .4em;
  padding: 0 .45em;}
.rag-src-file {font-weight: 600;}
.rag-src-page {color: #475569;}
.rag-src-score {margin-left: auto; color: #64748b; font-size: .85em; font-variant-numeric: tabular-nums;}
.rag-snippet {color: #334155; font-size: .92rem; line-height: 1.55;}
.rag-snippet mark {background: #fef08a; color: inherit; padding: 0 .1em; border-radius: .15em;}
.rag-page-text {font-size: .88rem; line-height: 1.5; color: #334155;}
.rag-muted {color: #64748b; font-size: .88rem;}
</style>
"""


def inject_css() -> None:
    st.html(CSS)
