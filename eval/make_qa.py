"""Draft a QA set from a knowledge base with an LLM: the way to build an evaluation set (and LoRA
training data) for private documents that no public benchmark covers.

Passages are sampled across documents; the model writes one question and a short answer copied
from the passage.  Drafts whose answer is not in the passage, or that are not valid JSON, are
dropped: an extractive answer is what makes the set checkable without a judge model.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

from eval.answers import contains
from eval.datasets import QAItem
from rag.lexical import language
from rag.store import Store
from rag.types import Chunk

PROMPT = {
    "en": (
        "Read the passage and write one question that it answers, and the answer: a short phrase copied "
        'word for word from the passage. Reply with JSON only, like {{"question": "...", "answer": "..."}}.'
        "\n\nPassage:\n{text}"
    ),
    "zh": (
        "阅读下面的段落，写一个段落能回答的问题，以及答案（从段落中原样摘出的短语）。"
        '只输出 JSON，例如 {{"question": "...", "answer": "..."}}。\n\n段落：\n{text}'
    ),
}
_JSON = re.compile(r"\{.*?\}", re.DOTALL)
MIN_CHARS = 200  # passages shorter than this rarely hold a self-contained fact


def sample_chunks(kb: Store, n: int, seed: int) -> list[Chunk]:
    """Up to `n` passages, spread over documents (round-robin over shuffled documents)."""
    rng = random.Random(seed)
    rows = kb.chunk_ids(min_chars=MIN_CHARS) or kb.chunk_ids()
    by_doc: dict[int, list[int]] = {}
    for cid, did in rows:
        by_doc.setdefault(did, []).append(cid)
    pools = [rng.sample(ids, len(ids)) for ids in by_doc.values()]
    rng.shuffle(pools)
    picked: list[int] = []
    while len(picked) < n and any(pools):
        for pool in pools:
            if pool and len(picked) < n:
                picked.append(pool.pop())
    chunks = kb.chunks(picked)
    return [chunks[c] for c in picked if c in chunks]


def parse_draft(text: str) -> dict[str, str] | None:
    """The first JSON object with a question and an answer in the model's reply, if any."""
    for match in _JSON.finditer(text):
        try:
            obj = json.loads(match.group())
        except json.JSONDecodeError:
            continue
        q, a = obj.get("question"), obj.get("answer")
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            return {"question": q.strip(), "answer": a.strip()}
    return None


def draft_qa(
    kb: Store,
    chat_model: Any,
    n: int,
    seed: int = 0,
    progress: Callable[[int, int, int], None] | None = None,
) -> tuple[list[QAItem], int]:
    """(QA items, passages tried).  Tries up to 3n passages to collect n usable drafts."""
    items: list[QAItem] = []
    candidates = sample_chunks(kb, 3 * n, seed)
    tried = 0
    for chunk in candidates:
        if len(items) >= n:
            break
        tried += 1
        reply = str(chat_model.invoke([("user", PROMPT[language(chunk.text)].format(text=chunk.text))]).content)
        draft = parse_draft(reply)
        if draft and contains(chunk.text, [draft["answer"]]):
            items.append(
                QAItem(
                    id=f"{kb.name}-{chunk.chunk_id}",
                    question=draft["question"],
                    answers=[draft["answer"]],
                    gold_doc_ids=[chunk.source],
                    answerable=True,
                    extra={"source": chunk.source, "page": chunk.page_no, "chunk_id": chunk.chunk_id},
                )
            )
        if progress:
            progress(tried, len(items), n)
    return items, tried
