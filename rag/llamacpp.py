"""The local model on llama.cpp (xllamacpp's prebuilt bindings), in this process.

The same chat model as rag.llm.LocalChatModel to everything above it: LangChain streaming, the
stop strings, the token limit and the answer's deadline.  On a CPU it decodes about three
times as fast as transformers and loads in a third of the time, though it reads a prompt no
faster (bench/llm.py); it runs the packaged GGUF after a re-quantization of seconds instead of a
one-minute conversion to fp32.  Written here because langchain's
llama.cpp wrapper needs llama-cpp-python, which has no binary wheel and compiles for ten minutes.

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

from rag.config import LLMSettings
from rag.llm import _ACTIVE, STOP_STRINGS, InProcessChatModel, LLMError, _as_dicts, _Halt, start_outlived
from rag.models import resolve_gguf

_END = object()


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
        request = {
            "messages": _as_dicts(messages),
            "max_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
            "temperature": self.temperature,
            "stop": [st for st in (*STOP_STRINGS, *(stop or [])) if st.strip()],
            "stream": True,
            "cache_prompt": False,  # a cached prompt changes greedy output: answers must be reproducible
            "seed": 0,
        }
        halt = _Halt(_ACTIVE.get())
        pieces: queue.SimpleQueue[Any] = queue.SimpleQueue()
        failure: list[str] = []
        worker = threading.Thread(
            target=self._generate_into, args=(request, halt, pieces, failure), name="rag-llamacpp", daemon=True
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

    def _generate_into(self, request: dict[str, Any], halt: _Halt, pieces: Any, failure: list[str]) -> None:
        """Runs in a worker thread: llama.cpp calls back with each streamed chunk, and stops when told to."""

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
            result = self.server.handle_chat_completions(request, on_chunk)
            if isinstance(result, dict) and "error" in result:
                failure.append(_message(result))
        except Exception as exc:  # surfaced in the caller's thread
            failure.append(str(exc))
        finally:
            pieces.put(_END)


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
