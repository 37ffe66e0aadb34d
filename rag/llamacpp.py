"""The local model on llama.cpp (xllamacpp's prebuilt bindings), in this process.

The same chat model as rag.llm.LocalChatModel to everything above it: LangChain streaming, the
stop strings, the token limit and the answer's deadline.  On a CPU it decodes about three
times as fast as transformers and loads in a third of the time, though it reads a prompt no
faster (bench/llm.py); it runs the packaged GGUF after a re-quantization of seconds instead of a
one-minute conversion to fp32.  Written here because langchain's
llama.cpp wrapper needs llama-cpp-python, which has no binary wheel and compiles for ten minutes.

The system prompt is read once and kept: every answer begins with the same one (one per
language), a sixth of an English RAG prompt and a quarter of a Chinese one.  llama.cpp's own
prompt cache changes greedy output, because what it reuses depends on the questions before (the
same question twice re-reads only its last token, alone, and gets other logits).  Here what is
reused is always exactly the system prompt, read as one batch, and the rest of the prompt is
always read as one batch after it (`_prime`, `_slot_for`).  On prompts with more than about 64
tokens after the system prompt (any with a passage) and up to 2,048 in all, the logits are the
same, bit for bit, as when the whole prompt is read at once (60 of 60 SQuAD 2.0 and CMRC2018
prompts gave the same answers); other prompts are answered the same way every time.

The bindings also serve the model over HTTP on a random loopback port, which nothing here uses;
it gets a random API key so that no other local process can use it either.
"""

from __future__ import annotations

import os
import queue
import secrets
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import PrivateAttr

from rag.config import LLMSettings
from rag.llm import _ACTIVE, STOP_STRINGS, InProcessChatModel, LLMError, _as_dicts, _Halt, start_outlived
from rag.models import resolve_gguf

_END = object()
# Slots, each keeping one system prompt: one per language the prompts are written in (rag.prompts),
# and one more for conversations without a system prompt (`rag chat` rewriting a follow-up), so
# that they never take a system prompt's place.  Each has a KV cache of its own, of the whole
# context: in a shared one a prompt's cells would move, and with them the order in which attention
# adds them up.
SLOTS = 2
OTHER_SLOT = SLOTS


def default_threads() -> int:
    """Half the cores for decoding, a token at a time through hundreds of thread barriers: on 2
    cores, two threads decoded 54 tokens/s against one's 31 while both cores were free, and 1.3-1.7
    against 31 once another program kept one busy (README, "OpenMP threads")."""
    return max(1, (os.cpu_count() or 2) // 2)


def default_prompt_threads() -> int:
    """Every core for reading the prompt: one large batch of matrix products, which two threads on
    2 cores read in about half the time of one (429 tokens: 0.93 s against 1.75 s, idle)."""
    return max(1, os.cpu_count() or 1)


class LlamaCppChatModel(InProcessChatModel):
    """A GGUF chat model on llama.cpp, with the chat template stored in the file."""

    model_name: str
    server: Any
    temperature: float = 0.0
    max_new_tokens: int = 256
    _turn: threading.Lock = PrivateAttr(default_factory=threading.Lock)  # one answer at a time: see _prime
    _slots: dict[str, int] = PrivateAttr(default_factory=dict)  # system prompt -> slot, least recent first

    @classmethod
    def load(
        cls, llm: LLMSettings, cache_dir: Path, notify: Callable[[str], None] = lambda _: None
    ) -> LlamaCppChatModel:
        path = resolve_gguf(llm.model, cache_dir, llm.gguf_type, notify)
        return cls(
            model_name=llm.model,
            server=_start(path, llm.threads or default_threads(), llm.prompt_threads or default_prompt_threads()),
            temperature=llm.temperature,
            max_new_tokens=llm.max_new_tokens,
        )

    @property
    def _llm_type(self) -> str:
        return "rag-local-llamacpp"

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        conversation = _as_dicts(messages)
        prime = _prime(conversation)
        request = {
            "messages": conversation,
            "max_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
            "temperature": self.temperature,
            "stop": [st for st in (*STOP_STRINGS, *(stop or [])) if st.strip()],
            "stream": True,
            "cache_prompt": prime is not None,  # reuses what `prime` leaves, and nothing else
            "seed": 0,
        }
        halt = _Halt(_ACTIVE.get())
        pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()
        failure: list[str] = []
        worker = threading.Thread(
            target=self._generate_into,
            args=(prime, request, halt, pieces, failure),
            name="rag-llamacpp",
            daemon=True,
        )
        start_outlived(worker, halt.stop)
        sent = 0
        try:
            while (piece := pieces.get()) is not _END:
                sent += len(piece)
                yield self._emit(piece, run_manager)
        finally:
            halt.stop()  # the reader is done or has gone: free the CPU at the next token
            worker.join()
        if failure:
            raise LLMError(f"local generation failed: {failure[0]}")
        if halt.deadline is not None and halt.timed_out:
            raise halt.deadline.exceeded(sent)
        if sent == 0:  # the model ended (or hit a stop string) at once: an empty answer, not a failure
            yield self._emit("", run_manager)

    def _generate_into(
        self, prime: dict[str, Any] | None, request: dict[str, Any], halt: _Halt, pieces: Any, failure: list[str]
    ) -> None:
        """Runs in a worker thread: llama.cpp calls back with each streamed chunk, and stops when
        told to.  Priming and answering happen under one lock, so that no other answer's prompt
        enters the slot in between."""

        def on_chunk(chunk: Any) -> bool:
            if isinstance(chunk, dict) and "error" in chunk:
                failure.append(_message(chunk))
                return True
            choices = chunk.get("choices") if isinstance(chunk, dict) else None
            for choice in choices or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    pieces.put(text)
            return halt.done()

        try:
            with self._turn:
                if halt.done():  # timed out, or the reader left, while another answer had its turn
                    return
                request["id_slot"] = OTHER_SLOT
                if prime:
                    prime["id_slot"] = request["id_slot"] = self._slot_for(prime["messages"][0]["content"])
                    primed = self.server.handle_chat_completions(prime)
                    if isinstance(primed, dict) and "error" in primed:
                        failure.append(_message(primed))
                        return
                result = self.server.handle_chat_completions(request, on_chunk)
            if isinstance(result, dict) and "error" in result:
                failure.append(_message(result))
        except Exception as exc:  # surfaced in the caller's thread
            failure.append(str(exc))
        finally:
            pieces.put(_END)

    def _slot_for(self, system: str) -> int:
        """The slot that last kept `system`, else a free one, else the least recently used.  Only
        speed depends on it: a slot that holds something else reads the system prompt again."""
        slot = self._slots.pop(system, None)
        if slot is None:
            slot = len(self._slots) if len(self._slots) < SLOTS else self._slots.pop(next(iter(self._slots)))
        self._slots[system] = slot
        return slot


def _prime(conversation: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A request that leaves the slot holding the system prompt and, after it, only the header of a
    reply, which no question's prompt shares: the conversation's system message alone, read, with
    one token decoded after it that nobody reads (about 30 ms; `max_tokens` 0 still decodes one).
    The system prompt is read as one batch the first time, and kept.  None for a conversation
    without one: it is read whole, uncached."""
    if len(conversation) < 2 or conversation[0]["role"] != "system":
        return None
    return {"messages": conversation[:1], "max_tokens": 0, "temperature": 0.0, "cache_prompt": True}


def _message(result: dict[str, Any]) -> str:
    error = result.get("error")
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


def _start(path: Path, threads: int, prompt_threads: int) -> Any:
    """A llama.cpp server for `path`.  A file it cannot load is an LLMError naming the file and the
    cause, which llama.cpp writes only to stderr: so a failed load is repeated with stderr captured."""
    try:
        import xllamacpp
    except ImportError as exc:
        raise LLMError("llm.engine = 'llamacpp' needs xllamacpp: pip install xllamacpp") from exc

    def params(verbosity: int) -> Any:
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_ctx = 0  # the model's own context length
        p.cpuparams.n_threads = threads  # decoding, a token at a time
        p.cpuparams_batch.n_threads = prompt_threads  # reading the prompt, in batches
        # A prompt is read in batches of n_ubatch (512 by default): past it, a cached read and a
        # whole one would split it in other places, and a small last batch takes another path
        # through the matrix code (other logits).  One batch up to n_batch (2,048) tokens: the
        # same memory and speed here.
        p.n_ubatch = p.n_batch
        p.n_parallel = SLOTS + 1  # see SLOTS; answers take turns all the same
        p.cache_ram_mib = 0  # no saved prompts restored: they would reuse more than the system prompt
        p.cache_idle_slots = False
        p.verbosity = verbosity
        p.api_keys = [secrets.token_urlsafe(32)]
        return p

    try:
        return xllamacpp.Server(params(-1))
    except Exception:
        cause = _stderr_of(lambda: xllamacpp.Server(params(1)))
        raise LLMError(f"llama.cpp could not load {path}: {cause or 'no reason given'}") from None


def _stderr_of(call: Callable[[], Any]) -> str:
    """The error lines `call` writes to the process's stderr (file descriptor 2) as it fails."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            call()
        except Exception:  # expected: the same failure, this time with its cause on stderr
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode("utf-8", "replace").splitlines()
    errors = [line.split(" E ", 1)[1].strip() for line in lines if " E " in line]
    return "; ".join(dict.fromkeys(e.split(":", 1)[-1].strip() for e in errors[:2]))
