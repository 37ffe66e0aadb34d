"""Chat-model factory: `local` (transformers in-process, optional peft adapter) or `openai`
(any OpenAI-compatible server, i.e. vLLM).  Both are LangChain chat models that stream, so
switching is a config change only.  Each backend's library is imported in its own branch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict

from rag.config import LLMSettings, Settings
from rag.models import resolve_llm


class LLMError(RuntimeError):
    """The language model could not answer; the message says why and what to do."""


def make_chat_model(settings: Settings, notify: Callable[[str], None] = lambda _: None) -> BaseChatModel:
    llm = settings.llm
    match llm.backend:
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
            )
    raise LLMError(f"unknown llm.backend {llm.backend!r}: use 'local' or 'openai'")


def with_token_limit(chat: BaseChatModel, n: int) -> Any:
    """The same model, limited to `n` new tokens (each backend names the limit its own way)."""
    return chat.bind(max_new_tokens=n) if isinstance(chat, LocalChatModel) else chat.bind(max_tokens=n)


def _as_dicts(messages: list[BaseMessage]) -> list[dict[str, str]]:
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    return [{"role": roles.get(m.type, m.type), "content": str(m.content)} for m in messages]


class LocalChatModel(BaseChatModel):
    """A transformers causal LM in this process, streaming through TextIteratorStreamer.

    Written here because langchain-huggingface would pull a second model stack for the same job;
    this is the thin part: chat template in, tokens out.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_name: str
    hf_model: Any
    tokenizer: Any
    temperature: float = 0.0
    max_new_tokens: int = 256
    stop_criteria: Any = None  # built once: transformers takes ~2 s to build it per generate() call

    @classmethod
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

    @staticmethod
    def _emit(text: str, run_manager: CallbackManagerForLLMRun | None) -> ChatGenerationChunk:
        chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
        if run_manager:
            run_manager.on_llm_new_token(text, chunk=chunk)
        return chunk

    @property
    def _llm_type(self) -> str:
        return "rag-local-transformers"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(str(c.message.content) for c in self._stream(messages, stop, run_manager, **kwargs))
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        from transformers import TextIteratorStreamer

        inputs = self.tokenizer.apply_chat_template(
            _as_dicts(messages), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        greedy = self.temperature <= 0
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": self.temperature}
        # A small model that has answered often starts a new "Question:" of its own.
        stops = [st for st in (*STOP_STRINGS, *(stop or [])) if st.strip()]
        criteria = self.stop_criteria if not stop else _stop_criteria(self.tokenizer, stops)
        generate_kwargs = {
            **inputs,
            "streamer": streamer,
            "stopping_criteria": criteria,
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

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
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
                break
        else:
            # Stopped by max_new_tokens inside a character that spans several byte-level tokens
            # (most Chinese characters do): the streamer's last flush ends in U+FFFD. Half a
            # character is not text; drop it rather than show "保修期为十年，或累计放电量达到 30 兆�".
            buffer = buffer.rstrip("\ufffd")
            if len(buffer) > sent:
                yield self._emit(buffer[sent:], run_manager)
        worker.join()
        if failure:
            raise LLMError(f"local generation failed: {failure[0]}") from failure[0]
        if sent == 0:  # the model ended (or hit a stop string) at once: an empty answer, not a failure
            yield self._emit("", run_manager)


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
