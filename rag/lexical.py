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
        tokens += [t for t in _jieba().lcut(run.group()) if t.strip()]
        pos = run.end()
    tokens += _latin_tokens(text[pos:])
    return tokens
