"""The knowledge base as a LangChain `BaseRetriever`, so it plugs into other LangChain code
(chains, agents, ensembles) with the same retrieval `rag ask` uses."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from rag.retrieve import Filters, Retriever


class KnowledgeBaseRetriever(BaseRetriever):
    """`KnowledgeBaseRetriever(retriever=Retriever(kb, embedder, settings.retrieve)).invoke("question")`"""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: Retriever
    top_k: int | None = None
    mode: str | None = None
    filters: Filters | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        result = self.retriever.search(query, top_k=self.top_k, mode=self.mode, filters=self.filters)
        return [_document(h) for h in result.hits]


def _document(hit: Any) -> Document:
    c = hit.chunk
    return Document(
        page_content=c.text,
        metadata={
            "source": c.source,
            "page": c.page_no,
            "chunk_id": c.chunk_id,
            "doc_id": c.doc_id,
            "char_start": c.char_start,
            "char_end": c.char_end,
            "score": hit.score,
            "similarity": hit.similarity,
            "ranks": dict(hit.sources),
        },
    )
