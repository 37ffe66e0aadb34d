r"""Query expansion from a domain lexicon: the words a question uses, next to the words the
documents use for the same thing.

A question asks whether a company is "capital intensive" or what its "capex" was; the page that
answers says "Purchases of property, plant and equipment" under "Consolidated Statement of Cash
Flows", and neither BM25 nor a small general-purpose embedder bridges the two.  A lexicon entry
names the phrases a question may use and what to add to it; the expanded query is what BM25
searches.  The question itself, unexpanded, is what the relevance gate and the LLM see.

Written by hand: the libraries' answer (LangChain's MultiQueryRetriever, HyDE) asks an LLM to
rewrite the question, which the embedded 135M model cannot do usefully and a server does in
seconds; a lexicon is instant, reproducible and editable by the user.  Lexicons are TOML files:

    [[entry]]
    when = ["capex", "capital expenditure"]   # phrases, matched as whole words, plural or not
    add = "purchases of property, plant and equipment; statement of cash flows"

    [[entry]]
    match = '\bFY ?(\d{4})\b'               # or a regular expression ...
    add = '\1'                                # ... whose groups the addition may use
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

BUILT_IN = Path(__file__).with_name("lexicons")


class LexiconError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    pattern: re.Pattern[str]  # any of the entry's phrases, as whole words, or its regular expression
    add: str
    groups: bool = False  # `add` is a template for each match (a `match` entry)

    def additions(self, query: str) -> list[str]:
        if not self.groups:
            return [self.add] if self.pattern.search(query) else []
        return [m.expand(self.add) for m in self.pattern.finditer(query)]


class Lexicon:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    def additions(self, query: str) -> list[str]:
        """What the entries whose phrases occur in `query` add, in the lexicon's order."""
        return list(dict.fromkeys(a for e in self.entries for a in e.additions(query)))

    def expand(self, query: str) -> str:
        """`query`, then on a line of its own what the lexicon adds (nothing when no phrase occurs)."""
        added = self.additions(query)
        return "\n".join([query, "; ".join(added)]) if added else query


def load_lexicon(names: tuple[str, ...] | list[str]) -> Lexicon:
    """The entries of every named lexicon: a built-in name (`finance`) or a TOML file's path."""
    return Lexicon([entry for name in names for entry in _entries(str(name))])


@cache
def _entries(name: str) -> tuple[Entry, ...]:
    path = BUILT_IN / f"{name}.toml" if re.fullmatch(r"[a-z0-9_-]+", name) else Path(name).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in BUILT_IN.glob("*.toml")))
        raise LexiconError(f"{name!r} is neither a built-in lexicon ({known}) nor a TOML file")
    try:
        items = tomllib.loads(path.read_text(encoding="utf-8")).get("entry", [])
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LexiconError(f"{path}: not a TOML file ({exc})") from exc
    entries = []
    for number, item in enumerate(items if isinstance(items, list) else [items], start=1):
        try:
            entries.append(_entry(item))
        except (KeyError, TypeError, AttributeError, ValueError, re.error) as exc:
            raise LexiconError(
                f"{path}: [[entry]] {number}: {exc}; an entry is when = [phrases] or match = 'regex', and add = text"
            ) from exc
    return tuple(entries)


def _entry(item: dict) -> Entry:
    if "add" not in item or not str(item["add"]).strip():
        raise ValueError("no add")
    add = str(item["add"]).strip()
    if "match" in item:
        pattern = re.compile(str(item["match"]), re.IGNORECASE)
        pattern.sub(add, "")  # a group `add` names that the pattern lacks fails here, not on a question
        return Entry(pattern, add, groups=True)
    phrases = [str(p).strip().lower() for p in item.get("when", []) if str(p).strip()]
    if not phrases:
        raise ValueError("no when")
    return Entry(re.compile("|".join(_phrase(p) for p in phrases), re.IGNORECASE), add)


def _phrase(phrase: str) -> str:
    """Whole words, spaces or hyphens between them, and an optional plural 's' at the end."""
    words = [re.escape(w) for w in re.split(r"[\s-]+", phrase)]
    return r"(?<!\w)" + r"[\s-]+".join(words) + r"(?:e?s)?(?!\w)"
