"""Fixtures for tuning and serving: a small knowledge base with a QA set over it, and a tiny
randomly initialised Llama (made here, with the default model's tokenizer and chat template)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval.datasets import QAItem, write_corpus, write_qa
from tests.conftest import MODEL_CACHE, qa_settings

# Six one-sentence documents, one fact each, and questions over them.
DOCS = {
    "d1": ("Solar panels", "Photovoltaic panels convert sunlight into electricity using silicon cells."),
    "d2": ("Wind turbines", "Wind turbines turn the kinetic energy of moving air into electrical power."),
    "d3": ("Bread baking", "Sourdough bread rises because wild yeast ferments the dough overnight."),
    "d4": ("Coffee brewing", "Espresso is brewed by forcing hot water through finely ground coffee beans."),
    "d5": ("Glaciers", "Glaciers carve valleys as compacted snow and ice slowly flow downhill."),
    "d6": ("Honey bees", "Honey bees pollinate flowers and store nectar as honey in wax combs."),
}
QA = [
    QAItem("a1", "What do photovoltaic panels convert sunlight into?", ["electricity"], ["d1"]),
    QAItem("a2", "What makes sourdough bread rise overnight?", ["wild yeast"], ["d3"]),
    QAItem("a3", "What do honey bees store nectar in?", ["wax combs"], []),  # gold found by retrieval
    QAItem("a4", "How is espresso brewed?", ["forcing hot water through finely ground coffee beans"], ["d4.txt"]),
    QAItem("a5", "What do glaciers carve?", ["valleys"], ["d5"]),
    QAItem("a6", "What do wind turbines turn into electrical power?", ["kinetic energy of moving air"], ["d2"]),
    QAItem("u1", "How fast do glaciers flow downhill in metres per day?", [], ["d5"], answerable=False),
    QAItem("u2", "Which country produces the most honey?", [], ["d6"], answerable=False),
    QAItem("x1", "Who invented the bicycle?", ["Karl Drais"], ["no-such-doc"]),  # gold not in the base
    QAItem("x2", "What colour are glaciers?", ["blue"], ["d5"]),  # its gold document lacks the answer
]


@pytest.fixture(scope="session")
def mini_kb(tmp_path_factory: pytest.TempPathFactory, embedder) -> Path:
    """The data dir of a knowledge base "mini": one file per document, named by its id."""
    from ingest.pipeline import IngestPipeline, open_for_ingest

    data = tmp_path_factory.mktemp("tune-data")
    docs = {doc_id: {"title": title, "text": text} for doc_id, (title, text) in DOCS.items()}
    folder = write_corpus(docs, data / "corpus")
    settings = qa_settings(data)
    with open_for_ingest(settings, "mini", embedder) as kb:
        report = IngestPipeline(settings, embedder, kb).run([folder])
    assert report.added == len(DOCS)
    return data


def pump_base(
    factory: pytest.TempPathFactory, embedder, docs: dict[str, dict[str, str]], questions: list[QAItem]
) -> Path:
    """The data dir of a knowledge base "pumps" holding `docs`, one file each, with `questions`
    written beside it as qa.jsonl (the reranker's and the embedder's generated pump corpora)."""
    from ingest.pipeline import IngestPipeline, open_for_ingest

    data = factory.mktemp("pumps") / "data"
    folder = write_corpus(docs, data.parent / "corpus")
    settings = qa_settings(data)
    with open_for_ingest(settings, "pumps", embedder) as kb:
        assert IngestPipeline(settings, embedder, kb).run([folder]).added == len(docs)
    write_qa(questions, data.parent / "qa.jsonl")
    return data


@pytest.fixture(scope="session")
def default_model_path() -> Path:
    """The default SmolLM2-135M-Instruct, converted once into the repository's model cache."""
    from rag.config import LLMSettings
    from rag.models import resolve_llm

    return Path(resolve_llm(LLMSettings().model, MODEL_CACHE))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, default_model_path: Path) -> Path:
    """A 2-layer Llama (hidden 128, head dim 32: what vLLM's CPU attention supports), random
    weights, the default model's tokenizer and chat template: loads and trains in seconds.
    Initialised 5x wider than usual so its logits are not flat: a few LoRA steps then make
    greedy decoding clear-cut, and vLLM and transformers pick the same tokens."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(default_model_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.1,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
