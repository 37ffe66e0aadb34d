"""Tokens for BM25: English words stemmed and stop-worded, Chinese segmented with jieba.

One function serves both indexing and querying, so the two can never drift apart.  The
English part follows bm25s' own defaults (lower-case, ``\\w\\w+``, English stop words, Snowball
stemmer), which is what the published bm25s BEIR numbers use.  Written by hand only because
bm25s' tokenizer treats a run of Chinese characters as one word.
"""

from __future__ import annotations

import logging
import re
from functools import cache

_WORD = re.compile(r"(?u)\b\w\w+\b")
_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# Function words that would otherwise dominate Chinese matches (the English list is bm25s').
_ZH_FUNCTION_WORDS = (
    "的 了 是 在 和 与 或 及 也 都 就 而 之 其 这 那 有 为 对 把 被 吗 呢 吧 啊 么 什么 怎么 怎样 如何 哪 哪些 "
    "多少 个 一个 请 我 你 他 她 它 我们 你们 他们 该 此 并 等 以 于 中 上 下"
)
STOPWORDS_ZH = frozenset(_ZH_FUNCTION_WORDS.split())


def language(text: str) -> str:
    """'zh' when Chinese characters outnumber Latin words in `text`, else 'en'."""
    return "zh" if len(_CJK_CHAR.findall(text)) > len(_LATIN_WORD.findall(text)) else "en"


@cache
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


@cache
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _latin_tokens(text: str) -> list[str]:
    stop = _stopwords()
    words = [w for w in _WORD.findall(text) if w not in stop]
    return _stemmer().stemWords(words) if words else []


def tokenize(text: str) -> list[str]:
    text = text.lower()
    tokens: list[str] = []
    pos = 0
    for run in _CJK_RUN.finditer(text):
        tokens += _latin_tokens(text[pos : run.start()])
        tokens += [t for t in _jieba().lcut(run.group()) if t.strip() and t not in STOPWORDS_ZH]
        pos = run.end()
    tokens += _latin_tokens(text[pos:])
    return tokens
