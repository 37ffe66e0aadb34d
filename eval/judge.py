"""An LLM judge for answers: does the answer say what a gold answer says?

Token F1 and exact match punish a right answer given in a sentence ("The Normans were led by
Rollo [1]" against "Rollo"), and `contains` misses a paraphrase ("ten years" against "10 years");
a judge model reads both. It grades answerable questions only (refusals of unanswerable ones are
what not-found accuracy scores), and a refused answerable question counts as wrong without a
call. Optional (`rag eval answers --judge MODEL`): it costs one more model call per answer, and a
grade is only as good as the judge, so each row keeps the judge's own words for checking.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rag.config import Settings
from rag.lexical import language

_CITATION = re.compile(r"\s*\[\d+\]")

PROMPTS = {
    "en": (
        "You grade answers to questions against reference answers. Reply with one word: yes or no.",
        "Question: {question}\nReference answer: {golds}\nCandidate answer: {prediction}\n\n"
        "Does the candidate answer give the same answer as the reference? Reply yes or no.",
    ),
    "zh": (
        "你根据参考答案判断回答是否正确。只回答一个字：是 或 否。",
        "问题：{question}\n参考答案：{golds}\n待评回答：{prediction}\n\n"
        "待评回答与参考答案的答案一致吗？只回答 是 或 否。",
    ),
}
_YES = ("yes", "correct", "right", "true")
_NO = ("no", "incorrect", "wrong", "false", "not")


class JudgeError(RuntimeError):
    """The judge model could not be called (server down, unknown model); the message says why."""


def judge_messages(question: str, golds: list[str], prediction: str) -> list[tuple[str, str]]:
    """The judge's prompt: citation marks are dropped, since "[1]" means nothing to it."""
    system, user = PROMPTS[language(question)]
    answer = _CITATION.sub("", prediction).strip()
    return [("system", system), ("user", user.format(question=question, golds=" | ".join(golds), prediction=answer))]


def verdict(reply: str) -> bool | None:
    """yes / no from the judge's first word; None when it said neither (counted apart, not guessed)."""
    text = reply.strip().lower()
    for negative in ("不", "否", "错"):  # before the positive ones: "不正确" holds "正确"
        if text.startswith(negative):
            return False
    if text.startswith(("是", "对", "正确")):
        return True
    first = re.match(r"[a-z]+", text)
    if first and first.group() in _YES + _NO:
        return first.group() in _YES
    # "The candidate answer is correct." Only the first sentence, and a negation wins.
    words = set(re.findall(r"[a-z]+", re.split(r"[.!?\n]", text, maxsplit=1)[0]))
    if words & set(_NO):
        return False
    if words & set(_YES):
        return True
    return None


def judge_rows(
    invoke: Callable[[list[tuple[str, str]]], str],
    rows: list[dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Grade each answerable row in place: `judge` (True / False / None) and `judge_reply`.

    `invoke` sends a prompt to the judge model and returns its reply; it raises JudgeError when
    the model cannot be reached, which stops the grading (every later call would fail the same way).
    """
    for i, row in enumerate(rows, start=1):
        if row["answerable"]:
            if row["not_found"] or row["error"]:
                row["judge"], row["judge_reply"] = False, None
            else:
                reply = invoke(judge_messages(row["question"], row["answers"], row["prediction"]))
                row["judge"], row["judge_reply"] = verdict(reply), reply
        if progress:
            progress(i, len(rows))


def make_judge(settings: Settings) -> Callable[[list[tuple[str, str]]], str]:
    """The judge model of `settings.llm`, greedy and short, as a prompt -> reply function."""
    from rag.llm import make_chat_model
    from rag.qa import describe_llm_error

    llm = settings.llm.model_copy(update={"adapter": None, "temperature": 0.0, "max_new_tokens": 8})
    settings = settings.model_copy(update={"llm": llm})
    chat = make_chat_model(settings)

    def invoke(messages: list[tuple[str, str]]) -> str:
        try:
            return str(chat.invoke(messages).content)
        except Exception as exc:  # the backend's own error types; described for the user
            raise JudgeError(f"judge {llm.model!r}: {describe_llm_error(exc, settings)}") from exc

    return invoke
