"""The answering stack, assembled in one place: a knowledge base (a Store), the embedder it was
built with, a Retriever over the two, and QA with a chat model made on first need.

The command line, the web UI, evaluation, tuning and an HTTP API all get their retrievers and
answers here.  What differs between them is handed in, and nothing here prints: the UI passes
its process-wide embedder and chat model, evaluation an embedder shared by the configurations it
compares, the command line a spinner (`loading`) and a line printer (`notify`) for the model load.

Heavy imports (langchain, the model code) wait until a stack is built, so a command that only
lists its options never pays for them.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

from rag.config import Settings
from rag.embed import Embedder
from rag.retrieve import Retriever
from rag.store import Store, open_store

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rag.qa import QA

ChatModelFactory = Callable[[], "BaseChatModel"]
# Wraps loading the chat model (a spinner, a log line); called with e.g. "local model NAME".
Loading = Callable[[str], AbstractContextManager[Any]]
Notify = Callable[[str], None]


def embedder_for(settings: Settings, shared: MutableMapping[str, Embedder] | None = None) -> Embedder:
    """The embedder of settings.embed (its model loads on first use); with `shared`, one per
    distinct embedding settings, kept there for the next call (evaluation compares configurations
    that share one)."""
    if shared is None:
        return Embedder(settings.embed)
    key = settings.embed.model_dump_json()
    if key not in shared:
        shared[key] = Embedder(settings.embed)
    return shared[key]


def retriever_for(settings: Settings, kb: str | Store, *, embedder: Embedder | None = None) -> Retriever:
    """A Retriever with settings.retrieve over `kb`: a knowledge base's name (opened with
    rag.store.open_store), or a Store already open.  KBError when the base is missing or was built
    with another embedding model."""
    store = open_store(settings, kb) if isinstance(kb, str) else kb
    return Retriever(store, embedder or embedder_for(settings), settings.retrieve)


def lazy_chat_model(
    settings: Settings, *, notify: Notify | None = None, loading: Loading | None = None
) -> ChatModelFactory:
    """What QA calls on first need: rag.llm.make_chat_model(settings), inside `loading` (given
    "<backend> model <name>"), with `notify` hearing progress lines such as a download's."""

    def make() -> BaseChatModel:
        from rag.llm import make_chat_model

        llm = settings.llm
        with loading(f"{llm.backend} model {llm.model}") if loading else nullcontext():
            return make_chat_model(settings, notify=notify or (lambda _: None))

    return make


def answering(
    settings: Settings,
    kb: str | Store,
    *,
    embedder: Embedder | None = None,
    chat_model: ChatModelFactory | None = None,
    notify: Notify | None = None,
    loading: Loading | None = None,
) -> QA:
    """QA over `kb` (a name, or a Store already open) with `settings`.

    `embedder`: one already made (default: a new one for settings.embed).  `chat_model`: what makes
    the chat model (default: `lazy_chat_model(settings, notify=notify, loading=loading)`).  Either
    way the chat model is made when an answer first needs it: a question the documents do not
    cover never loads it."""
    from rag.qa import QA

    retriever = retriever_for(settings, kb, embedder=embedder)
    return QA(retriever, settings, chat_model or lazy_chat_model(settings, notify=notify, loading=loading))
