"""Chat-model factory: `local` (in-process: llama.cpp for GGUF models, see rag.llamacpp, or
transformers with an optional peft adapter) or `openai`
(any OpenAI-compatible server, i.e. vLLM).  Both are LangChain chat models that stream, so
switching is a config change only.  Each backend's library is imported in its own branch.

`llm.timeout_s` is one deadline per answer (:class:`Deadline`): :func:`stream_within` and
:func:`invoke_within` run a model call in a worker thread and wait for it only until then, so
neither a silent server, nor one that trickles a byte at a time, nor the openai client's
retries can keep the user waiting longer.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from pydantic import ConfigDict

from rag.config import LLMSettings, Settings
from rag.models import is_gguf, resolve_llm
from rag.openmp import gives_back_threads


class LLMError(RuntimeError):
    """The language model could not answer; the message says why and what to do."""


class LLMTimeout(LLMError):
    """The answer was not finished within llm.timeout_s; whatever text had arrived is kept by the caller."""


@dataclass
class Deadline:
    """One answer's time budget, llm.timeout_s, shared by every model call the answer makes (the
    follow-up rewrite, the answer itself, and the openai client's retries of either).

    httpx's timeout is per read and the openai client retries after one, so a per-request timeout
    let a trickling server hold `rag ask` indefinitely and a silent one twice as long as promised.
    The clock starts at the first call: loading a local model is not counted.
    """

    seconds: float
    who: str  # "the LLM at http://…/v1" or "the local model …", for the message
    scope: str = "the whole answer"
    _end: float | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_answer(cls, llm: LLMSettings) -> Deadline:
        if llm.backend == "openai":
            retries = ", retries included" if llm.max_retries else ""
            return cls(llm.timeout_s, f"the LLM at {llm.base_url}", f"the whole answer{retries}")
        return cls(llm.timeout_s, f"the local model {llm.model}")

    def remaining(self) -> float:
        """Seconds left (0 once passed); the first call starts the clock."""
        if self._end is None:
            self._end = time.monotonic() + self.seconds
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return self.remaining() <= 0

    def exceeded(self, sent: int = 0) -> LLMTimeout:
        """The error to raise, saying how much of the answer had arrived (`sent` characters)."""
        progress = (
            f"it had sent {sent} character{'s' if sent != 1 else ''}, kept as a partial answer"
            if sent
            else "no answer text had arrived"
        )
        return LLMTimeout(
            f"{self.who} did not finish answering within {self.seconds:g} s (llm.timeout_s, {self.scope}); {progress}"
        )


# The deadline of the call running in this thread: read by the openai client's HTTP hooks and by
# the local model, which are called from deep inside langchain and cannot be handed it directly.
_ACTIVE: ContextVar[Deadline | None] = ContextVar("rag_llm_deadline", default=None)

T = TypeVar("T")


def stream_within(chat: Runnable[Any, Any], messages: Any, deadline: Deadline, **kwargs: Any) -> Iterator[Any]:
    """`chat.stream(messages, **kwargs)`, ended by LLMTimeout at `deadline`; the chunks that came
    before it have been yielded, and the message counts their characters."""
    sent = 0
    try:
        for chunk in _in_worker(lambda: chat.stream(messages, **kwargs), deadline):
            sent += len(str(chunk.content))
            yield chunk
    except _Expired as exc:
        raise deadline.exceeded(sent) from exc.__cause__


def invoke_within(chat: Runnable[Any, Any], messages: Any, deadline: Deadline, **kwargs: Any) -> Any:
    """`chat.invoke(messages, **kwargs)`, or LLMTimeout at `deadline`."""
    results = _in_worker(lambda: iter([chat.invoke(messages, **kwargs)]), deadline)
    try:
        return next(results)
    except _Expired as exc:
        raise deadline.exceeded() from exc.__cause__
    finally:
        results.close()


class _Expired(Exception):
    """The deadline passed while waiting; the caller turns it into LLMTimeout with what it had received."""


_END = object()


def _in_worker(produce: Callable[[], Iterator[T]], deadline: Deadline) -> Iterator[T]:
    """The items of `produce()`, made in a daemon thread and each awaited only until `deadline`.

    Blocking network reads cannot be interrupted from outside, so the caller stops waiting instead;
    the thread, told it is no longer wanted, stops at its next item (or sooner: the openai hooks end
    its request at the deadline, and the local model stops generating), and never delays exit.
    """
    if deadline.expired():
        raise _Expired
    items: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
    unwanted = threading.Event()
    worker = threading.Thread(target=_feed, args=(produce, deadline, items, unwanted), name="rag-llm-call", daemon=True)
    start_outlived(worker, unwanted.set)
    try:
        while True:
            try:
                item, error = items.get(timeout=deadline.remaining())
            except queue.Empty:
                raise _Expired from None
            if item is _END:
                break
            yield item
    finally:
        unwanted.set()
    if error is not None:
        # A failure at the deadline (the HTTP read timed out, the local model stopped) is the deadline.
        if isinstance(error, LLMTimeout) or deadline.expired():
            raise _Expired from error
        raise error


def _feed(
    produce: Callable[[], Iterator[Any]],
    deadline: Deadline,
    items: queue.SimpleQueue[tuple[Any, BaseException | None]],
    unwanted: threading.Event,
) -> None:
    """The worker: puts each item, then (_END, the exception or None); stops early once unwanted."""
    _ACTIVE.set(deadline)  # a new thread has a context of its own: this is seen by this call only
    error: BaseException | None = None
    try:
        source = produce()
        try:
            for item in source:
                if unwanted.is_set():
                    break
                items.put((item, None))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()  # a stream's generator: closes the HTTP response, or stops local generation
    except BaseException as exc:  # handed to the caller's thread
        error = exc
    items.put((_END, error))


def make_chat_model(settings: Settings, notify: Callable[[str], None] = lambda _: None) -> BaseChatModel:
    llm = settings.llm
    match llm.backend:
        case "local" if local_engine(llm, notify) == "llamacpp":
            from rag.llamacpp import LlamaCppChatModel

            return LlamaCppChatModel.load(llm, settings.cache_dir, notify)
        case "local":
            return LocalChatModel.load(llm, settings.cache_dir, notify)
        case "openai":
            try:
                from langchain_openai import ChatOpenAI
            except ImportError as exc:
                raise LLMError("the openai backend needs langchain-openai: pip install langchain-openai") from exc
            return ChatOpenAI(
                base_url=llm.base_url,
                api_key=llm.api_key,
                model=llm.model,
                timeout=llm.timeout_s,
                max_retries=llm.max_retries,
                temperature=llm.temperature,
                max_tokens=llm.max_new_tokens,
                stream_usage=False,
                http_client=_deadline_http_client(),
            )
    raise LLMError(f"unknown llm.backend {llm.backend!r}: use 'local' or 'openai'")


def local_engine(llm: LLMSettings, notify: Callable[[str], None] = lambda _: None) -> str:
    """Which engine runs the local model: llama.cpp for GGUF models (on a CPU it loads in a third
    of the time and decodes three times as fast; bench/llm.py), transformers for hub ids, folders
    and peft adapters (llama.cpp takes GGUF LoRA only)."""
    if llm.engine == "llamacpp":
        if llm.adapter:
            raise LLMError("llm.adapter (a peft folder) runs on llm.engine = 'transformers' only; set that, or 'auto'")
        if not is_gguf(llm.model):
            raise LLMError(
                f"llm.engine = 'llamacpp' needs a .gguf file or the packaged default; {llm.model!r} is neither"
            )
        return "llamacpp"
    if llm.engine == "transformers" or llm.adapter or not is_gguf(llm.model):
        return "transformers"
    if importlib.util.find_spec("xllamacpp") is None:
        notify("xllamacpp is not installed, so the local model runs on transformers (slower): pip install xllamacpp")
        return "transformers"
    return "llamacpp"


def _deadline_http_client() -> Any:
    """The openai SDK's default HTTP client, with hooks that hold each request of a call made through
    stream_within/invoke_within to its deadline: timeouts no longer than the time left, no request
    (so no retry) once it has passed, and a body that stops at it (httpx's read timeout is per read,
    which a server sending a byte every 2 s never trips).  Without a deadline they do nothing."""
    import openai

    return openai.DefaultHttpxClient(event_hooks={"request": [_cap_request], "response": [_cap_response]})


def _cap_request(request: Any) -> None:
    deadline = _ACTIVE.get()
    if deadline is None:
        return
    left = deadline.remaining()
    if left <= 0:
        import openai

        raise openai.APITimeoutError(request=request)  # an OpenAIError: the SDK passes it on without a retry
    timeouts = request.extensions.get("timeout", {})
    request.extensions["timeout"] = {
        kind: left if timeouts.get(kind) is None else min(timeouts[kind], left)
        for kind in ("connect", "read", "write", "pool")
    }


def _cap_response(response: Any) -> None:
    deadline = _ACTIVE.get()
    if deadline is not None:
        response.stream = _deadline_stream_type()(response.stream, deadline, response.request)


@functools.cache
def _deadline_stream_type() -> type:
    """Built on first use: the base class comes with the openai SDK's HTTP library (httpx2), which the
    local backend does not need."""
    import httpx2
    import openai

    class DeadlineStream(httpx2.SyncByteStream):
        """A response body that fails at the deadline, however slowly its bytes arrive."""

        def __init__(self, inner: Any, deadline: Deadline, request: Any) -> None:
            self.inner, self.deadline, self.request = inner, deadline, request

        def __iter__(self) -> Iterator[bytes]:
            for piece in self.inner:
                if self.deadline.expired():
                    raise openai.APITimeoutError(request=self.request)
                yield piece

        def close(self) -> None:
            self.inner.close()

    return DeadlineStream


def with_token_limit(chat: BaseChatModel, n: int) -> Any:
    """The same model, limited to `n` new tokens (each backend names the limit its own way)."""
    return chat.bind(max_new_tokens=n) if isinstance(chat, InProcessChatModel) else chat.bind(max_tokens=n)


def _as_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    return [{"role": roles.get(m.type, m.type), "content": str(m.content)} for m in messages]


class InProcessChatModel(BaseChatModel):
    """What the two local engines share: a whole answer is the streamed one joined, and each piece
    reaches LangChain's callbacks as it comes."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    @staticmethod
    def _emit(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
        if run_manager:
            run_manager.on_llm_new_token(text, chunk=chunk)
        return chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(str(c.message.content) for c in self._stream(messages, stop, run_manager, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


class LocalChatModel(InProcessChatModel):
    """A transformers causal LM in this process, streaming through TextIteratorStreamer.

    Written here because langchain-huggingface would pull a second model stack for the same job;
    this is the thin part: chat template in, tokens out.
    """

    model_name: str
    hf_model: Any
    tokenizer: Any
    temperature: float = 0.0
    max_new_tokens: int = 256
    stop_criteria: Any = None  # built once: transformers takes ~2 s to build it per generate() call

    @classmethod
    @gives_back_threads  # loading runs torch on this thread; generation runs on another (rag.openmp)
    def load(cls, llm: LLMSettings, cache_dir: Path, notify: Callable[[str], None] = lambda _: None) -> LocalChatModel:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_llm(llm.model, cache_dir, notify)
        tokenizer = AutoTokenizer.from_pretrained(path)
        if not getattr(tokenizer, "chat_template", None):
            raise LLMError(f"model {llm.model!r} has no chat template; use an instruct/chat model")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if llm.adapter:
            model = _with_adapter(model, llm.adapter)
        model.eval()
        return cls(
            model_name=llm.model if not llm.adapter else f"{llm.model}+{Path(llm.adapter).name}",
            hf_model=model,
            tokenizer=tokenizer,
            temperature=llm.temperature,
            max_new_tokens=llm.max_new_tokens,
            stop_criteria=_stop_criteria(tokenizer, STOP_STRINGS),
        )

    @property
    def _llm_type(self) -> str:
        return "rag-local-transformers"

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        inputs = self.tokenizer.apply_chat_template(
            _as_dicts(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        greedy = self.temperature <= 0
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": self.temperature}
        # A small model that has answered often starts a new "Question:" of its own.
        stops = [st for st in (*STOP_STRINGS, *(stop or [])) if st.strip()]
        halt = _Halt(_ACTIVE.get())
        criteria = self.stop_criteria if not stop else _stop_criteria(self.tokenizer, stops)
        generate_kwargs = {
            **inputs,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([*criteria, halt]),
            "max_new_tokens": kwargs.get("max_new_tokens", self.max_new_tokens),
            "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            **sampling,
        }
        failure: list[BaseException] = []

        def generate() -> None:
            try:
                self.hf_model.generate(**generate_kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, name="rag-local-generate", daemon=True)
        start_outlived(worker, halt.stop)
        try:
            sent = yield from self._read(streamer, stops, run_manager)
        finally:
            halt.stop()  # the reader is done or has gone (generator closed): free the CPU now
            worker.join()
        if failure:
            raise LLMError(f"local generation failed: {failure[0]}") from failure[0]
        if halt.deadline is not None and halt.timed_out:
            raise halt.deadline.exceeded(sent)
        if sent == 0:  # the model ended (or hit a stop string) at once: an empty answer, not a failure
            yield self._emit("", run_manager)

    def _read(
        self, streamer: Any, stops: list[str], run_manager: CallbackManagerForLLMRun | None
    ) -> Generator[ChatGenerationChunk, None, int]:
        """The streamer's text as chunks, cut at the first stop string; returns the characters sent."""
        # Hold back a tail as long as the longest stop string, so one split across two
        # streamed pieces is never shown before it is recognised and cut.
        hold = max(len(st) for st in stops)
        buffer, sent = "", 0
        for text in streamer:
            buffer += text
            cut = _first_stop(buffer, stops)
            ready = cut if cut is not None else max(sent, len(buffer) - hold)
            if ready > sent:
                yield self._emit(buffer[sent:ready], run_manager)
                sent = ready
            if cut is not None:
                return sent
        # Stopped by max_new_tokens inside a character that spans several byte-level tokens
        # (most Chinese characters do): the streamer's last flush ends in U+FFFD. Half a
        # character is not text; drop it rather than show "保修期为十年，或累计放电量达到 30 兆�".
        buffer = buffer.rstrip("\ufffd")
        if len(buffer) > sent:
            yield self._emit(buffer[sent:], run_manager)
            sent = len(buffer)
        return sent


# The calls and generations running now, each with what stops it.  Python kills daemon threads at
# exit, and one killed inside torch or a tokenizer aborts the process ("terminate called without
# an active exception", exit 134): `rag ask` that timed out during a long prompt's prefill crashed
# instead of exiting 1, and so did one that timed out before its generation had begun (the call's
# thread still applying the chat template, on a loaded machine).  At exit all are stopped and
# waited for, which takes at most the current step.  A thread is forgotten only once it has ended:
# threads used to remove themselves on finishing their work, and a call's thread was then killed
# at exit while freeing the prompt's tensors that its last error still held (a CI run, exit -6).
_RUNNING: dict[threading.Thread, Callable[[], None]] = {}
EXIT_WAIT_S = 120


def start_outlived(thread: threading.Thread, stop: Callable[[], None]) -> None:
    """Start `thread`; at exit, `stop()` is called and the thread waited for until it has ended."""
    for ended in [t for t in list(_RUNNING) if t.ident is not None and not t.is_alive()]:
        _RUNNING.pop(ended, None)
    _RUNNING[thread] = stop
    try:
        thread.start()
    except BaseException:
        _RUNNING.pop(thread, None)
        raise


@atexit.register
def _stop_generating() -> None:
    """Stop every call and generation, and wait for their threads.  Looped: a call that had not yet
    started its generation starts it now, and that one is stopped too (its deadline has passed)."""
    give_up = time.monotonic() + EXIT_WAIT_S
    while time.monotonic() < give_up:
        for stop in list(_RUNNING.values()):
            stop()
        live = [t for t in list(_RUNNING) if t.is_alive()]
        if not live:
            return
        live[0].join(timeout=0.1)


class _Halt:
    """A stopping criterion (duck-typed: importing this module does not import transformers) that
    ends generation at the answer's deadline or once the reader has gone, so the CPU is freed then
    rather than after max_new_tokens.  Checked after every token; the prompt's prefill cannot be cut."""

    def __init__(self, deadline: Deadline | None) -> None:
        self.deadline = deadline
        self.timed_out = False
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def done(self) -> bool:
        if self.deadline is not None and self.deadline.expired():
            self.timed_out = True
        return self.timed_out or self._stopped.is_set()

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        return input_ids.new_full((input_ids.shape[0],), self.done()).bool()


STOP_STRINGS = ["Question:", "问题：", "Sources:", "<document>"]


def _stop_criteria(tokenizer: Any, stops: list[str]) -> Any:
    from transformers import StoppingCriteriaList, StopStringCriteria

    return StoppingCriteriaList([StopStringCriteria(tokenizer, stops)])


def _first_stop(text: str, stops: list[str]) -> int | None:
    found = [i for i in (text.find(st) for st in stops) if i >= 0]
    return min(found) if found else None


def _with_adapter(model: Any, adapter: str) -> Any:
    try:
        from peft import PeftModel
    except ImportError as exc:
        raise LLMError("llm.adapter needs peft: pip install peft") from exc
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise LLMError(f"llm.adapter {adapter!r} is not a peft adapter folder (no adapter_config.json)")
    return PeftModel.from_pretrained(model, str(path))
