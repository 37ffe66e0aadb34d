"""When the model did not answer: noticing it, and the extractive answer that replaces it.

A small model given a question and passages often writes the question back, or copies the
passages out line by line, or says one sentence over and over.  None of that is an answer, and
the first Chinese answer a new user saw was the question followed by the whole document.  Here:

- `QuestionEcho` decides while the answer streams whether it is starting with the question, so
  the echo is never shown and generation stops early;
- `echo_reason` looks at the finished answer: the question, or several lines copied from the
  passages that make up most of it;
- `extract` answers instead with the passage sentences that share the question's rarest words,
  each cited, and the Answer is marked as extracted on every surface;
- `without_repeats` cuts an answer where it starts saying again what it has just said.

Written here rather than taken from a library: it is the product's own judgement of its model's
output, and it reuses the tokenizer the citations and the keyword index use.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

from rag.lexical import tokenize
from rag.retrieve import Hit

# Lines, then sentences within them (Markdown headings and list items are lines of their own).
_SENTENCE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+|$)", re.MULTILINE)
_MIN_UNIT = 8  # characters (letters and digits) a line needs to count as copied


def _norm(text: str) -> str:
    """Letters and digits only, lower case: what stays when spacing and punctuation change."""
    return "".join(ch for ch in text.lower() if unicodedata.category(ch)[0] in "LN")


def units(text: str) -> list[str]:
    """The sentences of `text`.  A line break inside a paragraph is only where a PDF line wrapped,
    so lines are joined, except after a blank line, before a heading, list item or table row, and
    after a short unpunctuated line followed by a capital (a PDF's heading)."""
    lines = [line.strip() for line in text.splitlines()]
    joined = ""
    for prev, line in zip(["", *lines], lines, strict=False):
        if not line:
            joined += "\n"
        elif not prev or _starts_block(line) or _heading_before(prev, line):
            joined += "\n" + line
        else:
            joined += " " + line
    return [m.group().strip() for m in _SENTENCE.finditer(joined) if m.group().strip()]


def _starts_block(line: str) -> bool:
    return line.startswith(("#", "-", "*", "+", "•", "|")) or bool(re.match(r"\d+[.)]\s", line))


def _heading_before(prev: str, line: str) -> bool:
    return len(prev) < 60 and prev[-1].isalnum() and line[0].isupper()


class QuestionEcho:
    """Watches a streamed answer's start for the question written back."""

    def __init__(self, question: str) -> None:
        self.question = _norm(question)

    def undecided(self, text: str) -> bool:
        """True while what has arrived could still be the start of the question."""
        start = _norm(text)
        return len(start) < self._needed and self.question.startswith(start)

    def echoed(self, text: str) -> bool:
        return len(self.question) >= 4 and _norm(text).startswith(self.question[: self._needed])

    @property
    def _needed(self) -> int:
        return max(4, math.ceil(0.8 * len(self.question)))


def echo_reason(answer: str, question: str, passages: Sequence[str]) -> str | None:
    """Why `answer` is no answer, or None when it may be one."""
    if QuestionEcho(question).echoed(answer):
        return "the model wrote the question back instead of answering"
    context = [_norm(p) for p in passages]
    copied = [u for u in map(_norm, units(answer)) if len(u) >= _MIN_UNIT and any(u in c for c in context)]
    if len(copied) >= 2 and sum(map(len, copied)) >= 0.7 * len(_norm(answer)):
        return "the model copied the passages out instead of answering"
    return None


def extract(question: str, hits: Sequence[Hit], most: int = 2) -> tuple[str, list[int]]:
    """The passage sentences that best answer `question`, each followed by its [n], and those n.

    A sentence scores the question words it holds, each weighted by how few of the candidate
    sentences hold it, and by a quarter when it names the document's subject (its title and
    heading): in "海川 H10 的逆变器保修期是几年" the words that decide are 逆变器 and 保修期, not
    the product's name."""
    wanted = set(tokenize(question))
    candidates = [
        (n, sentence, set(tokenize(sentence)) & wanted, _subject(hit))
        for n, hit in enumerate(hits, start=1)
        for sentence in units(hit.chunk.text)
        if not sentence.startswith(("#", "|"))
        and not sentence.endswith(("?", "？"))
        and len(_norm(sentence)) >= _MIN_UNIT
    ]
    held = {w: sum(w in shared for _, _, shared, _ in candidates) for w in wanted}

    def weight(word: str, subject: set[str]) -> float:
        return math.log(1 + len(candidates) / held[word]) * (0.25 if word in subject else 1.0)

    scored = [
        (sum(weight(w, subject) for w in shared), -i, n, sentence)
        for i, (n, sentence, shared, subject) in enumerate(candidates)
        if shared
    ]
    if not scored:
        return "", []
    scored.sort(reverse=True)
    best = scored[0][0]
    chosen = sorted((x for x in scored[:most] if x[0] >= 0.8 * best), key=lambda x: -x[1])
    text = " ".join(f"{sentence} [{n}]" for _, _, n, sentence in chosen)
    return text, list(dict.fromkeys(n for _, _, n, _ in chosen))


def _subject(hit: Hit) -> set[str]:
    meta = hit.chunk.metadata or {}
    return set(tokenize(f"{meta.get('title', '')} {meta.get('heading', '')}"))


def without_repeats(answer: str) -> str:
    """`answer` up to the first sentence that repeats one before it (a small model's loop)."""
    seen: set[str] = set()
    for m in _SENTENCE.finditer(answer):
        key = _norm(m.group())
        if len(key) >= _MIN_UNIT and key in seen:
            return answer[: m.start()].rstrip()
        seen.add(key)
    return answer
