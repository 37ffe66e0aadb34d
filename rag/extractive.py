"""When the model did not answer: noticing it, and the extractive answer that replaces it.

A small model given a question and passages often writes the question back, or copies the
passages out line by line, or says one sentence over and over.  None of that is an answer, and
the first Chinese answer a new user saw was the question followed by the whole document.  Here:

- `QuestionEcho` decides while the answer streams whether it is starting with the question, so
  the echo is never shown and generation stops early;
- `echo_reason` looks at the finished answer: the question, or several lines copied from the
  passages that make up most of it;
- `ungrounded_reason` looks for what the passages do not hold: a figure no passage states, words
  half or more of which no passage uses, or a preamble ("The answer is:") that stops there;
- `extract` answers instead with the passage sentences, or the table cells, that share the
  question's rarest words, each cited, and the Answer is marked as extracted on every surface;
- `named_cell` finds the one table cell a question names outright (its row's label and its
  column's heading), whose value an answer must give;
- `without_repeats` cuts an answer where it starts saying again what it has just said.

Written here rather than taken from a library: it is the product's own judgement of its model's
output, and it reuses the tokenizer the citations and the keyword index use.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Iterator, Sequence

from rag.lexical import tokenize
from rag.retrieve import Hit

# Lines, then sentences within them (Markdown headings and list items are lines of their own).
_SENTENCE = re.compile(r"[^.!?。！？\n]+(?:[.!?。！？]+|$)", re.MULTILINE)
_MIN_UNIT = 8  # characters (letters and digits) a line needs to count as copied
_CITATION = re.compile(r"[\[【]\s*\d{1,3}(?:\s*[,，、]\s*\d{1,3})*\s*[\]】]")
# A figure an answer states: two digits or more, or a decimal ("5.8"); "4 June" is no figure.
_FIGURE = re.compile(r"\d[\d,，]*\.\d+|\d[\d,，]*\d")
# English function words bm25s' short stop list keeps ("what", "were", "has"): they say nothing of
# what a sentence is about, so they neither pick a sentence nor count as an answer's own words.
_FUNCTION_WORDS = (
    "what which who whom whose when where why how were was did does do done been being have has had "
    "would could should can may might must shall also about its he she his her him they them their "
    "we our you your me my"
)
_STUTTER = re.compile(r"([^\n]{2,30}?)\1{4,}")
_MIN_UNSUPPORTED = 3  # own words in no passage an answer needs before it counts as ungrounded
_MAX_PREAMBLE = 6  # words of a "The answer is:" that stops there
# Markdown tables as the loaders write them (ingest.tables): lines starting with "|".
_TABLE = re.compile(r"^\|[^\n]*(?:\n\|[^\n]*)+", re.MULTILINE)
_CELL = re.compile(r"(?<!\\)\|")
_SEPARATOR_CELLS = re.compile(r"[\s:-]*")


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


def ungrounded_reason(answer: str, question: str, passages: Sequence[str]) -> str | None:
    """Why `answer` is not drawn from the passages, or None when it may be.

    The default 135M model, given a table it cannot read, states a figure of its own ("a net
    income of $1.1 billion" beside a statement that says 5,777), and given a letter's signature,
    describes what a group leader does instead of naming him.  A figure (two digits or more) that
    neither the passages nor the question hold is not grounded; nor is an answer half or more of
    whose own words (those not in the question, three at least) no passage uses, nor a preamble that stops
    ("The answer is:", what is left of a loop)."""
    text = _CITATION.sub(" ", answer)
    if text.rstrip().endswith((":", "：")) and len(tokenize(text)) <= _MAX_PREAMBLE:
        return "the model stopped before it said anything"
    context = "\n".join(passages)
    known = figures(question) | figures(context)
    invented = [f for f in _FIGURE.findall(text) if _figure(f) not in known]
    if invented:
        return f"the model wrote {invented[0].strip()}, a figure no passage holds"
    asked, used = _words(question), set(tokenize(context))
    own = _words(text) - asked
    unsupported = own - used
    if len(unsupported) >= _MIN_UNSUPPORTED and 2 * len(unsupported) >= len(own):
        return f"half or more of the model's words are in no passage ({len(unsupported)} of {len(own)})"
    return None


def _words(text: str) -> set[str]:
    return set(tokenize(text)) - _function_words()


@functools.cache
def _function_words() -> frozenset[str]:
    return frozenset(tokenize(_FUNCTION_WORDS))  # stemmed as the words they are taken from


def _figure(text: str) -> str:
    return text.replace(",", "").replace("，", "")


def figures(text: str) -> set[str]:
    """The figures `text` states, thousands separators dropped ("34,229" -> "34229")."""
    return {_figure(f) for f in _FIGURE.findall(text)}


def extract(question: str, hits: Sequence[Hit], most: int = 2) -> tuple[str, list[int]]:
    """The passage sentences or table rows that best answer `question`, each followed by its
    [n], and those n.

    A sentence scores the question words it holds, each weighted by how few of the candidate
    sentences hold it, and by a quarter when it names the document's subject (its title and
    heading): in "海川 H10 的逆变器保修期是几年" the words that decide are 逆变器 and 保修期, not
    the product's name.  A table row scores its label's words and those of the column headings
    the question names, and is given as those cells ("Net sales, 2022: $34,229").  A sentence that
    holds nothing but question words ("Group Leader - Facsimile Research") comes with the lines
    on either side, where a signature's name or a label's value stands."""
    wanted = _words(question)
    candidates = [
        (n, text, shared, focus, _subject(hit))
        for n, hit in enumerate(hits, start=1)
        for text, shared, focus in [*_sentences(hit.chunk.text, wanted), *_table_rows(hit.chunk.text, wanted)]
    ]
    held = {w: sum(w in shared for _, _, shared, _, _ in candidates) for w in wanted}

    def weight(word: str, subject: set[str]) -> float:
        return math.log(1 + len(candidates) / held[word]) * (0.25 if word in subject else 1.0)

    scored = [
        (focus * sum(weight(w, subject) for w in shared), -i, n, sentence)
        for i, (n, sentence, shared, focus, subject) in enumerate(candidates)
        if shared
    ]
    if not scored:
        return "", []
    scored.sort(reverse=True)
    best = scored[0][0]
    chosen = sorted((x for x in scored[:most] if x[0] >= 0.8 * best), key=lambda x: -x[1])
    text = " ".join(f"{sentence} [{n}]" for _, _, n, sentence in chosen)
    return text, list(dict.fromkeys(n for _, _, n, _ in chosen))


def _sentences(text: str, wanted: set[str]) -> list[tuple[str, set[str], float]]:
    """The passage's sentences (not headings, table rows or questions) with the question words
    each holds; one holding nothing else comes with its neighbours."""
    found = []
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("|")]
    for sentence in units(text):
        if sentence.startswith(("#", "|")) or sentence.endswith(("?", "？")) or len(_norm(sentence)) < _MIN_UNIT:
            continue
        words = _words(sentence)
        if words and words <= wanted:
            sentence = _with_neighbours(sentence, lines)
        found.append((sentence, words & wanted, 1.0))
    return found


def _with_neighbours(sentence: str, lines: list[str]) -> str:
    """The lines before and after the one that holds `sentence`, with it."""
    k = next((k for k, line in enumerate(lines) if sentence in line), None)
    return sentence if k is None else " ".join(lines[max(0, k - 1) : k + 2])


def _table_rows(text: str, wanted: set[str]) -> list[tuple[str, set[str], float]]:
    """Each row of the passage's Markdown tables as "label, column: value" for the columns whose
    headings the question names (every column when it names none), with the question words its
    label and those headings hold, and the square root of the share of its label's words the
    question holds: "Net sales" answers "net sales in 2022" better than "Proceeds from sale of
    businesses, net of cash sold".  A unit the header gives, "(Millions)", follows the values."""
    found = []
    for header, rows, unit in _tables(text):
        named = {j: set(tokenize(h)) & wanted for j, h in enumerate(header) if j}
        columns = [j for j, words in named.items() if words] or list(named)
        for row in rows:
            label = row[0] if row else ""
            cells = [(header[j], row[j]) for j in columns if j < len(row) and j < len(header) and row[j]]
            if not label or not cells:
                continue
            values = "; ".join(f"{h}: {v}" if h else v for h, v in cells)
            own = _words(label)
            focus = math.sqrt(len(own & wanted) / len(own)) if own else 0.0
            words = own | {w for j in columns for w in named[j]}
            found.append((f"{label}, {values}{unit}", words & wanted, focus))
    return found


def named_cell(question: str, hits: Sequence[Hit]) -> tuple[str, str] | None:
    """The one table cell the question names outright, as its value ("$34,229") and an answer
    that gives it ("Net sales, 2022: $34,229 (Millions) [1]"), or None.  A row is named when
    every word of its label is in the question ("Net sales" in "What were 3M's total net sales
    in 2022?") and a column when its heading is (2022); several such cells with different values
    name none.  A small model reads a statement's columns badly ("net sales of $5,862", another
    row's figure), and this lookup does not."""
    wanted = _words(question)
    found: dict[frozenset[str], tuple[str, str]] = {}
    for n, hit in enumerate(hits, start=1):
        for header, rows, unit in _tables(hit.chunk.text):
            columns = [j for j, h in enumerate(header) if j and set(tokenize(h)) & wanted]
            for row in rows:
                label = _words(row[0]) if row else set()
                cells = [(header[j], row[j]) for j in columns if j < len(row) and row[j]]
                if label and label <= wanted and len(cells) == 1:
                    heading, value = cells[0]
                    found.setdefault(frozenset(figures(value)), (value, f"{row[0]}, {heading}: {value}{unit} [{n}]"))
    return next(iter(found.values())) if len(found) == 1 else None


def _tables(text: str) -> Iterator[tuple[list[str], list[list[str]], str]]:
    """Each Markdown table in `text`: its header cells, its rows' cells (not the separator), and
    the unit its first heading gives (" (Millions)"), or ""."""
    for block in _TABLE.finditer(text):
        header, *rows = (_cells(line) for line in block.group().splitlines())
        unit = f" {header[0]}" if header and header[0].startswith("(") else ""
        yield header, [r for r in rows if not _SEPARATOR_CELLS.fullmatch("".join(r))], unit


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in _CELL.split(line.strip())[1:-1]]


def _subject(hit: Hit) -> set[str]:
    meta = hit.chunk.metadata or {}
    return set(tokenize(f"{meta.get('title', '')} {meta.get('heading', '')}"))


def without_repeats(answer: str) -> str:
    """`answer` up to the first sentence that repeats one before it (a small model's loop), and
    up to the second time a stutter says its piece ("statements.pdf.pdf.pdf…")."""
    stutter = _stutter(answer)
    if stutter is not None:
        answer = answer[: stutter.start() + len(stutter.group(1))]
    seen: set[str] = set()
    for m in _SENTENCE.finditer(answer):
        key = _norm(m.group())
        if len(key) >= _MIN_UNIT and key in seen:
            return answer[: m.start()].rstrip()
        seen.add(key)
    return answer


def stutter_reason(answer: str) -> str | None:
    """Why `answer` broke down: the same few characters over and over, mid-sentence."""
    return None if _stutter(answer) is None else "the model said the same few characters over and over"


def _stutter(text: str) -> re.Match[str] | None:
    """The first run of one short piece said five times or more in a row, where the piece has a
    letter or digit and is no table cell ("| --- |" repeats in every table)."""
    return next((m for m in _STUTTER.finditer(text) if _has_word(m.group(1)) and "|" not in m.group(1)), None)


def _has_word(text: str) -> bool:
    return any(ch.isalnum() for ch in text)
