"""`POST /v1/kbs/{kb}/search`: retrieval only, as `rag ask` retrieves (same Retriever, same
fusion and gate), without an LLM.  Each hit says where it is (file, page, character span), how
it scored, where each retriever ranked it, and whether it clears the relevance gate (what an LLM
would be shown)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from rag.evidence import layout_json, on_page
from rag.retrieve import Filters, Hit
from server.auth import Principal, needs
from server.bases import Bases
from server.services import Services, services

router = APIRouter(tags=["search"])

Mode = Literal["hybrid", "dense", "bm25"]


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(None, ge=1, le=100, description="hits wanted (default: retrieve.top_k)")
    mode: Mode | None = Field(None, description="hybrid | dense | bm25 (default: retrieve.mode)")
    only: str | None = Field(None, max_length=200, description="only documents whose path or name matches, '*.pdf'")
    documents: list[int] | None = Field(None, max_length=10_000, description="only these document ids")


class SearchHit(BaseModel):
    rank: int
    document_id: int | None
    file: str
    page: int | None
    char_start: int
    char_end: int
    text: str
    score: float = Field(description="the fused (or reranked) score that ordered the list")
    similarity: float = Field(description="cosine similarity of the query and the passage")
    ranks: dict[str, int] = Field(description="the rank each retriever gave it: dense, bm25 (and rerank)")
    relevant: bool = Field(description="clears the relevance gate: an answer would be drawn from it")
    boxes: list[list[float]] = Field(
        default_factory=list,
        description="where the passage sits on its page: [x0, y0, x1, y1] per line, origin top-left, y down, "
        "in units of page_size (PDF points or image pixels); empty for formats without pages",
    )
    page_size: list[float] | None = Field(None, description="[width, height] of the page the boxes are measured on")


class SearchResponse(BaseModel):
    kb: str
    query: str
    mode: Mode
    generation: int = Field(description="the knowledge base's generation when the search started")
    hits: list[SearchHit]


def search(bases: Bases, kb: str, request: SearchRequest) -> SearchResponse:
    """Run one search of base `kb` (also what the MCP `search` tool does)."""
    retriever = bases.qa(kb).retriever
    generation = retriever.kb.generation
    filters = Filters(path_glob=request.only, doc_ids=request.documents)
    result = retriever.search(request.query, top_k=request.top_k, mode=request.mode, filters=filters)
    relevant = {h.chunk.chunk_id for h in result.relevant}
    hits = [_hit(rank, h, h.chunk.chunk_id in relevant) for rank, h in enumerate(result.hits, start=1)]
    mode = request.mode or retriever.settings.mode
    return SearchResponse(kb=kb, query=request.query, mode=mode, generation=generation, hits=hits)


def _hit(rank: int, hit: Hit, relevant: bool) -> SearchHit:
    c = hit.chunk
    return SearchHit(
        rank=rank,
        document_id=c.doc_id,
        file=Path(c.source).name,
        page=c.page_no,
        char_start=c.char_start,
        char_end=c.char_end,
        text=c.text,
        score=hit.score,
        similarity=hit.similarity,
        ranks=hit.sources,
        relevant=relevant,
        **layout_json(*on_page(c.metadata)),
    )


@router.post("/v1/kbs/{kb}/search", summary="Search a knowledge base (no LLM)")
def search_route(
    kb: str,
    body: SearchRequest,
    svc: Annotated[Services, Depends(services)],
    _: Annotated[Principal, Depends(needs("read"))],
) -> SearchResponse:
    return search(svc.bases, kb, body)
