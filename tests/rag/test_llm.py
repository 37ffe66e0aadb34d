"""Both LLM backends through one interface: the local model in-process, and an OpenAI-compatible
server over real HTTP with the real openai client; failures become clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from rag.llm import LLMError, make_chat_model
from rag.qa import QA
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from tests.conftest import MODEL_CACHE, qa_settings
from tests.fixtures.openai_server import free_port, serve

QUESTION = "How long is the battery module covered by the warranty?"


def test_local_backend_streams_one_short_generation(chat_model) -> None:
    messages = [("user", "Say hello in one short sentence.")]
    pieces = [str(c.content) for c in chat_model.stream(messages)]
    assert len(pieces) > 1 and "".join(pieces).strip()
    assert "".join(pieces) == str(chat_model.invoke(messages).content)  # greedy: reproducible


def test_an_empty_generation_is_an_empty_answer_not_an_error(chat_model) -> None:
    # The model's own first character as a stop string cuts the answer before anything is shown:
    # SQuAD questions met this through an immediate end-of-text, and langchain called it "No
    # generation chunks".  One stop string, not every printable character: transformers takes
    # ~0.4 s to index each one, which made this test the slowest of the unit tests (65 s).
    messages = [("user", "Say hello.")]
    reply = str(chat_model.invoke(messages).content)
    assert reply and not reply[0].isspace()  # else the cut would leave the space, not nothing
    chunks = list(chat_model.stream(messages, stop=[reply[0]]))
    assert "".join(str(c.content) for c in chunks) == ""
    assert chat_model.invoke(messages, stop=[reply[0]]).content == ""


def test_a_token_limit_inside_a_chinese_character_never_shows_half_of_it(chat_model) -> None:
    # Most Chinese characters take two or three byte-level tokens, so a limit of n tokens often
    # ends mid-character; the final flush then decoded to U+FFFD, e.g. "达到 30 兆�" in `make demo`.
    messages = [("user", "请重复这句话：电池本体保修期为十年。")]
    replies = ["".join(str(c.content) for c in chat_model.stream(messages, max_new_tokens=n)) for n in range(1, 8)]
    assert all("\ufffd" not in reply for reply in replies), replies
    assert replies[-1].startswith("电池"), "the model repeats the sentence: whole characters survive"


def test_local_backend_refuses_a_folder_that_is_not_an_adapter(tmp_path: Path) -> None:
    settings = qa_settings(tmp_path, llm={"adapter": str(tmp_path)})
    with pytest.raises(LLMError, match=r"adapter_config\.json"):
        make_chat_model(settings)


@pytest.fixture(scope="module")
def server(chat_model):
    with serve({"smollm2": chat_model}) as base_url:
        yield base_url


def openai_qa(sample_kb_dir, embedder, **llm):
    settings = qa_settings(sample_kb_dir, llm={"backend": "openai", **llm})
    kb = LocalStore.open(settings.kb_dir("sample"))
    return QA(Retriever(kb, embedder, settings.retrieve), settings, lambda: make_chat_model(settings))


def test_openai_backend_streams_a_grounded_answer(server, sample_kb_dir, embedder) -> None:
    qa = openai_qa(sample_kb_dir, embedder, base_url=server, model="smollm2")
    items = list(qa.stream(QUESTION))
    answer = items[-1]
    assert len(items) > 3 and answer.error is None and answer.found
    assert ("helios-h10-warranty.pdf", 2) in {(Path(c.source).name, c.page) for c in answer.citations}


def test_unknown_model_names_what_the_server_serves(server, sample_kb_dir, embedder) -> None:
    answer = openai_qa(sample_kb_dir, embedder, base_url=server, model="my-adapter").ask(QUESTION)
    assert answer.error and "does not serve model 'my-adapter'" in answer.error and "smollm2" in answer.error
    assert answer.context, "the retrieved passages are still there for the user"


def test_server_down_is_a_clear_error_and_keeps_the_passages(sample_kb_dir, embedder) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    qa = openai_qa(sample_kb_dir, embedder, base_url=down, model="x")
    assert qa.settings.llm.max_retries == 1, "the default settings: the retry is refused too"
    answer = qa.ask(QUESTION)
    assert answer.error and "cannot reach the LLM server" in answer.error and down in answer.error
    assert "did not finish" not in answer.error and "timed out" not in answer.error, "a refusal is not a timeout"
    assert answer.context and answer.answer == ""


# ---- the CLI ---------------------------------------------------------------------------------
def cli(sample_kb_dir: Path, *args: str, **env: str):
    base_env = {"RAG_DATA_DIR": str(sample_kb_dir), "RAG_CACHE_DIR": str(MODEL_CACHE), "RAG_LLM__MAX_NEW_TOKENS": "48"}
    return CliRunner().invoke(app, list(args), env={**base_env, **env, "COLUMNS": "200"})


def test_rag_ask_streams_then_lists_sources(sample_kb_dir) -> None:
    result = cli(sample_kb_dir, "ask", QUESTION, "--kb", "sample")
    assert result.exit_code == 0, result.output
    assert "Sources" in result.output and "helios-h10-warranty.pdf, p. 2" in result.output


def test_rag_ask_json(sample_kb_dir) -> None:
    result = cli(sample_kb_dir, "ask", QUESTION, "--kb", "sample", "--json", "--mode", "bm25", "--top-k", "2")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["found"] is True and len(data["retrieved"]) == 2
    assert all(r["ranks"].keys() == {"bm25"} for r in data["retrieved"])
    assert any(c["page"] == 2 and c["source"].endswith("helios-h10-warranty.pdf") for c in data["citations"])


def test_rag_ask_not_found(sample_kb_dir) -> None:
    result = cli(sample_kb_dir, "ask", "What is the capital of France?", "--kb", "sample")
    assert result.exit_code == 0
    assert "I could not find the answer in the documents." in result.output
    assert "Closest passages" in result.output


def test_rag_ask_with_the_server_down_exits_1_and_shows_passages(sample_kb_dir) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    result = cli(
        sample_kb_dir,
        "ask",
        QUESTION,
        "--kb",
        "sample",
        RAG_LLM__BACKEND="openai",
        RAG_LLM__BASE_URL=down,
    )
    assert result.exit_code == 1
    assert "cannot reach the LLM server" in result.output and "did not finish" not in result.output
    assert "helios-h10-warranty.pdf, p. 2" in result.output


def test_rag_ask_bad_mode_is_a_usage_error(sample_kb_dir) -> None:
    assert cli(sample_kb_dir, "ask", QUESTION, "--kb", "sample", "--mode", "fuzzy").exit_code == 2
    assert cli(sample_kb_dir, "ask", QUESTION, "--kb", "nope").exit_code == 2


def test_rag_chat_understands_a_follow_up(sample_kb_dir) -> None:
    result = CliRunner().invoke(
        app,
        ["chat", "--kb", "sample"],
        input="How long is the Helios H10 battery module under warranty?\nAnd the inverter?\n\n",
        env={
            "RAG_DATA_DIR": str(sample_kb_dir),
            "RAG_CACHE_DIR": str(MODEL_CACHE),
            "RAG_LLM__MAX_NEW_TOKENS": "40",
            "COLUMNS": "200",
        },
    )
    assert result.exit_code == 0, result.output
    follow_up = result.output.split("you> ")[2]  # the second turn: what the 135M model says first varies
    assert "searched for:" in follow_up and "inverter" in follow_up.split("searched for:")[1].lower()
    assert "helios-h10-warranty.pdf, p. 2" in follow_up, "the follow-up found the warranty terms"


def test_local_backend_applies_a_peft_adapter(tmp_path: Path) -> None:
    """A LoRA folder in llm.adapter changes what the local model says (a zero-initialised one would not)."""
    from peft import LoraConfig, get_peft_model

    base = make_chat_model(qa_settings(tmp_path, llm={"engine": "transformers"}))
    lora = get_peft_model(
        base.hf_model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    lora.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    tuned = make_chat_model(qa_settings(tmp_path, llm={"adapter": str(tmp_path / "adapter")}))  # engine auto
    assert tuned._llm_type == "rag-local-transformers", "an adapter runs on transformers"
    messages = [("user", "Name a colour.")]
    untuned = make_chat_model(qa_settings(tmp_path, llm={"engine": "transformers"}))
    assert str(tuned.invoke(messages).content) != str(untuned.invoke(messages).content)
    assert tuned.model_name.endswith("+adapter")
