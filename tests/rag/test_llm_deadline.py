"""llm.timeout_s is one deadline for a whole answer, retries included, on both backends.

A silent server, one that trickles a byte every 2 s, the openai client's retries and a long local
generation all end at it, with a message that says so and the passages still shown.  Real HTTP,
the real openai client and the default settings (max_retries=1); `elapsed < timeout + margin` is
the feature under test, not a speed check.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rag.qa import QA, Answer
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from tests.conftest import MODEL_CACHE, REPO, qa_settings
from tests.fixtures.openai_server import GIVE_UP_S, silent_server, slow_server, trickling_server
from tests.rag.test_llm import QUESTION, cli, openai_qa

TIMEOUT_S = 3
MARGIN_S = 2  # thread hand-offs and retrieval: well under a second; a retry would be another 3 s
SCOPE = "(llm.timeout_s, the whole answer, retries included)"
FOLLOW_UP = ("And the inverter?", [("user", QUESTION), ("assistant", "Ten years [1].")])


def ask_timed(qa: QA, question: str = QUESTION, history=()) -> tuple[Answer, float]:
    """qa.ask and its time, less what the deadline does not cover: creating the chat model (it imports
    langchain-openai) and retrieval (the passages are shown whatever the LLM does; ~1 s on a busy CPU)."""
    qa.chat  # noqa: B018
    started = time.monotonic()
    answer = qa.ask(question, history)
    return answer, time.monotonic() - started - answer.timings["retrieve_ms"] / 1000


def join_threads(name: str, timeout_s: float) -> list[threading.Thread]:
    """Wait for this process's threads called `name` to end; those still running after `timeout_s`."""
    threads = [t for t in threading.enumerate() if t.name == name]
    end = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    return [t for t in threads if t.is_alive()]


@pytest.mark.parametrize("asked", [(QUESTION, []), FOLLOW_UP], ids=["question", "follow-up"])
def test_a_silent_server_is_given_up_at_the_deadline_retry_included(sample_kb_dir, embedder, asked) -> None:
    """The follow-up's rewrite (condense) is under the same deadline as the answer."""
    with silent_server() as server:
        qa = openai_qa(sample_kb_dir, embedder, base_url=server.base_url, model="m", timeout_s=TIMEOUT_S)
        assert qa.settings.llm.max_retries == 1, "the default, which used to double the wait"
        answer, elapsed = ask_timed(qa, *asked)
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert answer.error == (
        f"the LLM at {server.base_url} did not finish answering within 3 s {SCOPE}; no answer text had arrived"
    )
    assert answer.answer == "" and answer.retrieved, "the passages are shown"


def test_a_trickling_server_is_cut_off_at_the_deadline_keeping_what_it_sent(sample_kb_dir, embedder) -> None:
    """httpx's timeout is per read: a byte every 2 s restarted it forever."""
    with trickling_server(head="The battery module", every_s=2) as server:
        qa = openai_qa(sample_kb_dir, embedder, base_url=server.base_url, model="m", timeout_s=TIMEOUT_S)
        answer, elapsed = ask_timed(qa)
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert answer.answer == "The battery module", "the partial answer stays visible"
    assert answer.error == (
        f"the LLM at {server.base_url} did not finish answering within 3 s {SCOPE}; "
        "it had sent 18 characters, kept as a partial answer"
    )
    assert answer.context


def test_a_slow_server_that_finishes_in_time_answers_token_by_token(sample_kb_dir, embedder) -> None:
    pieces = ["The battery module ", "is covered ", "for ten years ", "[1]."]
    with slow_server(pieces, gap_s=0.4) as server:
        qa = openai_qa(sample_kb_dir, embedder, base_url=server.base_url, model="m", timeout_s=TIMEOUT_S)
        qa.chat  # noqa: B018
        items = list(qa.stream(QUESTION))
    answer = items[-1]
    assert answer.error is None and items[:-1] == pieces, "streamed as sent, nothing cut"
    assert answer.answer == "The battery module is covered for ten years [1]." and answer.citations
    assert answer.timings["generate_ms"] > 1000 * len(pieces) * 0.4, "it was slow, and still answered"


def test_no_retry_is_sent_after_the_deadline(sample_kb_dir, embedder) -> None:
    """Each retry used to wait llm.timeout_s again; one that starts after the deadline is not sent."""
    with silent_server() as server:
        qa = openai_qa(sample_kb_dir, embedder, base_url=server.base_url, model="m", timeout_s=1, max_retries=3)
        answer, elapsed = ask_timed(qa)
        still_running = join_threads("rag-llm-call", timeout_s=10)  # the abandoned call's worker
        requests = server.requests
    assert elapsed < 1 + MARGIN_S and answer.error and "within 1 s" in answer.error
    assert not still_running, "the worker ends soon after the deadline"
    assert requests == 1


def test_the_local_backend_answers_within_the_deadline_too(sample_kb_dir, embedder, chat_model) -> None:
    settings = qa_settings(sample_kb_dir, llm={"timeout_s": 0.05})
    with LocalStore.open(settings.kb_dir("sample")) as kb:
        qa = QA(Retriever(kb, embedder, settings.retrieve), settings, lambda: chat_model)
        answer, elapsed = ask_timed(qa)
    join_threads("rag-llm-call", timeout_s=60)  # its prefill cannot be cut: let it end before the next test
    assert elapsed < 0.05 + MARGIN_S, "the prompt's prefill alone takes longer; the caller does not wait for it"
    assert answer.error == (
        f"the local model {settings.llm.model} did not finish answering within 0.05 s "
        "(llm.timeout_s, the whole answer); no answer text had arrived"
    )
    assert answer.context


def test_the_local_model_stops_generating_at_the_deadline(chat_model) -> None:
    """The CPU is freed at the deadline, not after max_new_tokens (minutes of counting here)."""
    from rag.llm import Deadline, LLMTimeout, stream_within

    deadline = Deadline(2, "the local model smollm2")
    messages = [("user", "Count from 1 to 1000, one number per line.")]
    pieces: list[str] = []
    started = time.monotonic()
    with pytest.raises(LLMTimeout) as raised:
        for chunk in stream_within(chat_model, messages, deadline, max_new_tokens=2000):
            pieces.append(str(chunk.content))
    elapsed = time.monotonic() - started
    assert elapsed < 2 + MARGIN_S
    assert not join_threads("rag-llm-call", timeout_s=5), "generation stopped at its next token"
    sent = len("".join(pieces))
    message = str(raised.value)
    assert message.startswith("the local model smollm2 did not finish answering within 2 s (llm.timeout_s, the whole")
    assert f"it had sent {sent} character" in message if sent else message.endswith("no answer text had arrived")


def test_rag_ask_gives_up_at_the_deadline_exits_1_and_says_why(sample_kb_dir: Path) -> None:
    with trickling_server(head="Let me check.") as server:
        started = time.monotonic()
        result = cli(
            sample_kb_dir,
            "ask",
            QUESTION,
            "--kb",
            "sample",
            RAG_LLM__BACKEND="openai",
            RAG_LLM__BASE_URL=server.base_url,
            RAG_LLM__TIMEOUT_S=str(TIMEOUT_S),
        )
        elapsed = time.monotonic() - started
    output = " ".join(result.output.split())  # the message is wider than the terminal
    assert result.exit_code == 1, result.output
    assert elapsed < GIVE_UP_S - 10, "it used to wait for the server to give up"
    assert output.startswith("Let me check."), "the partial answer is shown"
    assert (
        f"LLM error: the LLM at {server.base_url} did not finish answering within 3 s {SCOPE}; "
        "it had sent 13 characters, kept as a partial answer" in output
    )
    assert "helios-h10-warranty.pdf, p. 2" in output, "and the passages"


def test_at_exit_a_call_still_setting_up_its_generation_is_waited_for() -> None:
    """The deadline can pass before the call's thread has started generating (applying the chat
    template on a loaded machine).  Killed there at exit, inside a tokenizer or torch, the process
    aborted (exit -6, "terminate called without an active exception") in a CI run; the exit hook
    now waits for such a call as it does for a generation."""
    from rag.llm import Deadline, _Expired, _in_worker, _stop_generating

    started, finished = threading.Event(), threading.Event()

    def produce():
        started.set()
        time.sleep(0.5)  # the chat template, before any generation is registered
        finished.set()
        return iter(["late"])

    with pytest.raises(_Expired):
        list(_in_worker(produce, Deadline(0.05, "a test call")))
    assert started.is_set() and not finished.is_set()
    _stop_generating()
    assert finished.is_set(), "exit waited for the call's thread"


def test_at_exit_a_call_whose_work_is_done_is_waited_for_until_its_thread_has_ended() -> None:
    """A thread's objects are freed after its work returns: the timed-out call's error still held
    the prompt's tensors.  Threads used to deregister on returning, so exit did not wait for that
    freeing, and Python killed the thread inside torch (exit -6, one CI run in ten).  The profile
    hook makes the freeing slow enough to see."""
    from rag.llm import Deadline, _Expired, _in_worker, _stop_generating

    def slow_to_end(frame, event, arg):
        if event == "return" and frame.f_code.co_name == "_feed":
            time.sleep(0.5)  # after _feed's own code: where the thread freed its last objects

    ours = set(threading.enumerate())
    threading.setprofile(slow_to_end)
    try:
        with pytest.raises(_Expired):
            list(_in_worker(lambda: iter([time.sleep(0.2)]), Deadline(0.05, "a test call")))
    finally:
        threading.setprofile(None)
    _stop_generating()
    assert not [t for t in threading.enumerate() if t not in ours and t.name == "rag-llm-call"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["transformers", "llamacpp"])
def test_rag_ask_on_the_local_backend_exits_1_at_the_deadline_not_a_crash(sample_kb_dir: Path, engine: str) -> None:
    """The deadline can pass during the prompt's prefill; Python killing that thread inside torch (or
    llama.cpp) at exit aborted the process (exit 134).  A real process: the runner's exit is not the user's."""
    env = {
        **os.environ,
        "RAG_DATA_DIR": str(sample_kb_dir),
        "RAG_CACHE_DIR": str(MODEL_CACHE),
        "RAG_LLM__ENGINE": engine,
        "RAG_LLM__TIMEOUT_S": "0.05",
        "HF_HUB_OFFLINE": "1",
        "COLUMNS": "400",
    }
    ask = [sys.executable, "-m", "rag", "ask", QUESTION, "--kb", "sample"]
    result = subprocess.run(ask, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "did not finish answering within 0.05 s (llm.timeout_s, the whole answer)" in result.stderr
    assert "helios-h10-warranty.pdf, p. 2" in result.stdout
