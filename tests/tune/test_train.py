"""LoRA training on the real default model: a few steps lower the loss, the adapter is one vLLM
accepts, peft reloads it to the same outputs, an interrupted run resumes to the same adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rag.config import load_settings
from rag.llm import make_chat_model
from rag.retrieve import Retriever
from rag.store.local import LocalStore
from rag.tune.data import build_examples, load_sft, write_sft
from rag.tune.train import (
    DEFAULT_TARGETS,
    TrainConfig,
    TrainError,
    answer_loss,
    check_adapter,
    encode,
    save_adapter,
    train,
    vllm_problems,
)
from tests.conftest import MODEL_CACHE, qa_settings
from tests.tune.conftest import QA


@pytest.fixture(scope="module")
def sft_file(mini_kb: Path, embedder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = qa_settings(mini_kb)
    retriever = Retriever(LocalStore.open(settings.kb_dir("mini")), embedder, settings.retrieve)
    result = build_examples(QA, retriever, distractors=1, no_gold=0.5, validation=0.2)
    path = tmp_path_factory.mktemp("sft") / "sft.jsonl"
    write_sft(result.examples, path)
    return path


def config(base: Path, data: Path, out: Path, **kw) -> TrainConfig:
    defaults = {"max_steps": 6, "batch_size": 2, "lr": 1e-3, "warmup": 0.0, "save_steps": 100}
    return TrainConfig(data=data, out=out, base=str(base), **{**defaults, **kw})


def mean_answer_loss(model, tokenizer, conversations) -> float:
    model.eval()
    losses = []
    for conversation in conversations:
        enc = encode(tokenizer, conversation, 4096)
        with torch.no_grad():
            outputs = model(input_ids=torch.tensor([enc["input_ids"]]))
        losses.append(float(answer_loss(outputs, torch.tensor([enc["labels"]]))))
    return sum(losses) / len(losses)


def greedy(model, tokenizer, conversation, n: int = 12) -> list[int]:
    inputs = tokenizer.apply_chat_template(
        conversation[:-1], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokens[0, inputs["input_ids"].shape[1] :].tolist()


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_saves_an_adapter_that_reloads_exactly(
    default_model_path: Path, sft_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = train(config(default_model_path, sft_file, tmp_path / "adapter"))
    model, tokenizer = result.model, result.tokenizer
    conversations = load_sft(sft_file)["train"][:6]
    with model.disable_adapter():
        before = mean_answer_loss(model, tokenizer, conversations)
    after = mean_answer_loss(model, tokenizer, conversations)
    assert after < before - 0.1, f"training loss on the answers: {before:.3f} -> {after:.3f}"
    assert result.steps == 6 and result.validation_losses, "validation loss is measured"

    adapter = result.adapter
    lora = check_adapter(adapter)  # what vLLM would refuse raises here
    assert lora["r"] == 8 and not lora["modules_to_save"] and set(lora["target_modules"]) == set(DEFAULT_TARGETS)
    assert not (adapter / "checkpoints").exists(), "a finished adapter is a plain peft folder"
    assert json.loads((adapter / "training.json").read_text())["steps"] == 6

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(default_model_path), adapter).eval()
    probe = conversations[0]
    tuned = greedy(model, tokenizer, probe)
    assert greedy(reloaded, tokenizer, probe) == tuned
    with model.disable_adapter():
        assert greedy(model, tokenizer, probe) != tuned, "the adapter changes what the model says"
    # the local backend loads the same folder (llm.adapter) to the same answer
    local = make_chat_model(load_settings(cache_dir=MODEL_CACHE, llm={"adapter": str(adapter), "max_new_tokens": 12}))
    answer = str(local.invoke([(m["role"], m["content"]) for m in probe[:-1]]).content)
    assert answer and tokenizer.decode(tuned, skip_special_tokens=True).startswith(answer)  # or cut at a stop string


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_adapter(
    default_model_path: Path, sft_file: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    class Interrupt(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    straight = train(config(default_model_path, sft_file, tmp_path / "straight", max_steps=4, save_steps=2))
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train(config(default_model_path, sft_file, out, max_steps=4, save_steps=2), callbacks=[Interrupt()])
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "adapter_config.json").exists()
    with pytest.raises(TrainError, match="different lr"):
        train(config(default_model_path, sft_file, out, max_steps=4, save_steps=2, lr=5e-4))
    resumed = train(config(default_model_path, sft_file, out, max_steps=4, save_steps=2))
    assert resumed.resumed_from == "checkpoint-2" and resumed.steps == 4
    a = load_file(straight.adapter / "adapter_model.safetensors")
    b = load_file(out / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "same seed, same adapter"
    with pytest.raises(TrainError, match="already holds a trained adapter"):
        train(config(default_model_path, sft_file, out))


def test_what_vllm_would_refuse_is_named() -> None:
    ok = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "bias": "none", "use_dora": False, "modules_to_save": None}
    assert vllm_problems(ok, ["base_model.model.layers.0.self_attn.q_proj.lora_A.weight"]) == []
    problems = " | ".join(
        vllm_problems(
            {**ok, "r": 12, "use_dora": True, "bias": "all", "modules_to_save": ["lm_head"]}, ["lm_head.weight"]
        )
    )
    for words in ("rank 12", "DoRA", "biases", "modules_to_save", "no new tokens"):
        assert words in problems


def test_a_rank_vllm_cannot_serve_is_refused_before_loading_anything(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match=r"--rank 12: vLLM serves ranks 1, 8, 16"):
        train(config(tmp_path / "no-model", tmp_path / "no-data.jsonl", tmp_path / "out", rank=12))


def test_saving_an_adapter_with_modules_to_save_is_refused(tiny_base: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_base),
        LoraConfig(r=8, target_modules=["q_proj"], modules_to_save=["norm"], task_type="CAUSAL_LM"),
    )
    cfg = config(tiny_base, tmp_path / "sft.jsonl", tmp_path / "adapter")
    with pytest.raises(TrainError, match=r"refusing to save.*modules_to_save"):
        save_adapter(model, cfg, None, "")  # type: ignore[arg-type]
    assert not (tmp_path / "adapter").exists()


def test_rag_tune_train_reports_the_adapter_and_how_to_use_it(tiny_base: Path, sft_file: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    out = tmp_path / "adapters" / "mini"
    args = ["tune", "train", "--data", str(sft_file), "--out", str(out), "--base", str(tiny_base), "--max-steps", "2"]
    result = CliRunner().invoke(app, args, env={"RAG_CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"adapter -> {out} (2 steps of 4 examples" in result.output and "training loss" in result.output
    assert "validation loss after epoch" in result.output
    assert f"rag serve --adapter mini={out}" in result.output
    check_adapter(out)
    again = CliRunner().invoke(app, [*args, "--rank", "12"], env={"RAG_CACHE_DIR": str(MODEL_CACHE)})
    assert again.exit_code == 2 and "vLLM serves ranks" in again.output
