"""The OpenAI-compatible part: `POST /v1/chat/completions` (streamed as server-sent events or not)
and `GET /v1/models`, where a model is a knowledge base.

The official `openai` client and OpenAI-compatible front-ends (Open WebUI, LibreChat) work
unchanged: the last user message is the question, the earlier user and assistant messages are
the history a follow-up is rewritten with (as in `rag chat`), and the answer's text carries its
[n] markers.  What backs the answer travels in an extra field, `rag` (server.answers.answer_json):
on the message, and on the last chunk of a stream.  "Not found" is an answer like any other,
flagged there (`rag.found`).  The server's settings decide the model, its temperature and the
answer's length: the request's `temperature` and `max_tokens` are accepted and not used.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from rag.config import InvalidKBName, check_kb_name
from rag.evidence import evidence_for
from rag.qa import Answer
from rag.retrieve import Filters
from rag.store import list_bases
from server.answers import answer_json, answer_stream, answer_text
from server.auth import Principal, caller
from server.errors import APIError
from server.services import Services, services

log = logging.getLogger("rag.server")
router = APIRouter(tags=["chat (OpenAI-compatible)"])
HISTORY_TURNS = 3  # earlier question/answer pairs a follow-up is rewritten with (as in the web UI)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The text of the message; of a list of parts, the text parts joined."""
        if isinstance(self.content, list):
            return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class RetrievalOptions(BaseModel):
    """How to search, for this request only (default: the server's retrieve settings)."""

    mode: Literal["hybrid", "dense", "bm25"] | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    only: str | None = Field(None, max_length=200, description="only documents whose path or name matches this glob")


class ChatRequest(BaseModel):
    # OpenAI clients send fields this server does not use (temperature, max_tokens, user, ...).
    model_config = ConfigDict(extra="allow")

    model: str = Field(description="the knowledge base to answer from (see GET /v1/models)")
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    rag: RetrievalOptions | None = Field(None, description="retrieval options (an extension of the OpenAI format)")


def conversation(messages: list[Message]) -> tuple[str, list[tuple[str, str]]]:
    """(question, history): the last message, which must be the user's, and the user and
    assistant messages before it, the last HISTORY_TURNS exchanges of them."""
    last = messages[-1]
    if last.role != "user" or not last.text().strip():
        raise APIError(400, "the last message must be the user's question", "invalid_messages")
    history = [(m.role, m.text()) for m in messages[:-1] if m.role in ("user", "assistant") and m.text().strip()]
    return last.text().strip(), history[-2 * HISTORY_TURNS :]


def _knowledge_base(model: str, principal: Principal) -> str:
    try:
        check_kb_name(model)
    except InvalidKBName as exc:
        raise APIError(404, f"no model {model!r}: {exc}", "model_not_found") from exc
    principal.require(model, "read")
    return model


@router.get("/v1/models", summary="The knowledge bases this key may ask, as OpenAI models")
def models(
    svc: Annotated[Services, Depends(services)], principal: Annotated[Principal, Depends(caller)]
) -> dict[str, Any]:
    names = [n for n in list_bases(svc.settings) if principal.may(n, "read")]
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "rag"} for n in names]}


@router.post("/v1/chat/completions", summary="Answer the last user message from the knowledge base named by model")
async def chat_completions(
    body: ChatRequest,
    svc: Annotated[Services, Depends(services)],
    principal: Annotated[Principal, Depends(caller)],
):
    kb = _knowledge_base(body.model, principal)
    question, history = conversation(body.messages)
    qa = await run_in_threadpool(svc.bases.qa, kb)
    options = body.rag or RetrievalOptions()
    filters = Filters(path_glob=options.only) if options.only else None
    items = await answer_stream(
        qa, svc.slots, question, history, mode=options.mode, top_k=options.top_k, filters=filters
    )
    reply = _Reply(kb)
    if not body.stream:
        answer = await _last(items)
        _check_llm(answer)
        return reply.completion(answer)
    first = await anext(items)
    if isinstance(first, Answer):  # nothing was generated: the LLM failed before its first token
        _check_llm(first)
    return StreamingResponse(
        reply.events(first, items),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _last(items: AsyncIterator[str | Answer]) -> Answer:
    answer = None
    async for item in items:
        if isinstance(item, Answer):
            answer = item
    assert answer is not None, "QA.stream always ends with its Answer"
    return answer


def _check_llm(answer: Answer) -> None:
    """An LLM that failed before writing anything is 502, with the reason (a server that is down,
    a model it does not serve); a partial answer (a timeout) is still an answer."""
    if answer.error and not answer.answer:
        raise APIError(502, answer.error, "llm_failed")


class _Reply:
    """One answer in the OpenAI wire format, whole or as chunks."""

    def __init__(self, kb: str) -> None:
        self.kb = kb
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())

    def completion(self, answer: Answer) -> JSONResponse:
        message = {"role": "assistant", "content": answer_text(answer), "rag": answer_json(answer)}
        choice = {"index": 0, "message": message, "finish_reason": _finish_reason(answer)}
        return JSONResponse({**self._head("chat.completion"), "choices": [choice]})

    async def events(self, first: str | Answer, rest: AsyncIterator[str | Answer]) -> AsyncIterator[str]:
        """The answer as SSE events: a role chunk, its text as generated, a last chunk with the
        finish reason and the `rag` field, then [DONE]."""
        yield self._chunk({"role": "assistant", "content": ""})
        answer: Answer | None = first if isinstance(first, Answer) else None
        try:
            if answer is None:
                yield self._chunk({"content": first})
                async for item in rest:
                    if isinstance(item, Answer):
                        answer = item
                    elif item:
                        yield self._chunk({"content": item})
        except Exception as exc:  # after the status line: reported in the stream, as OpenAI does
            log.exception("answer stream failed")
            yield _sse(
                {"error": {"message": f"the answer failed: {type(exc).__name__}: {exc}", "type": "server_error"}}
            )
            yield "data: [DONE]\n\n"
            return
        assert answer is not None
        evidence = evidence_for(answer)
        if evidence.kind == "matched":
            # Sources matched by wording (the model cited none): streamed text cannot be marked
            # sentence by sentence any more, so the numbers close it (rag.answer has them in place).
            yield self._chunk({"content": " " + "".join(f"[{p.n}]" for p in evidence.passages)})
        last = self._chunk({}, _finish_reason(answer), rag=answer_json(answer, evidence))
        yield last
        yield "data: [DONE]\n\n"

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.kb}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**self._head("chat.completion.chunk"), "choices": [choice], **extra})


def _finish_reason(answer: Answer) -> str:
    cut_short = answer.error and answer.found and answer.answer  # by llm.timeout_s, say
    return "length" if cut_short else "stop"


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
