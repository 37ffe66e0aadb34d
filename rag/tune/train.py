"""LoRA training with peft and the transformers Trainer, producing an adapter vLLM can serve.

- Each example is rendered with the base model's own chat template; the loss covers only the
  assistant's answer (and its end-of-turn token), never the sources or the question.  Logits are
  computed only where the loss needs them: over a ~50k-token vocabulary, the full logits cost a
  fifth of every step on CPU and gigabytes of memory.
- The adapter is a plain peft folder: LoRA on the named projections, no `modules_to_save`, no
  new tokens, rank one of vLLM's allowed values.  :func:`vllm_problems` says what vLLM would
  refuse, and nothing that fails it is saved.
- Checkpoints go to ``<out>/checkpoints`` every `save_steps` steps; running the same command again
  resumes from the newest one (same data and settings, or it refuses).  The finished adapter
  replaces them.  Runs are deterministic for a seed (on one machine and device).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag.jsonfile import write_json
from rag.tune.data import load_sft

# vLLM's --max-lora-rank accepts only these; an adapter's rank must be one of them to be served.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
IGNORE = -100  # label of tokens the loss skips
RUN_FILE = "run.json"  # in <out>/checkpoints: what the checkpoints were trained on
TRAINING_FILE = "training.json"  # in <out>: how the adapter was made (base, data, losses, time)


class TrainError(RuntimeError):
    """Training cannot start or its result cannot be saved; the message says why."""


@dataclass
class TrainConfig:
    data: Path
    out: Path
    base: str  # a folder or hub id transformers can load (see rag.models.resolve_llm)
    base_name: str | None = None  # the name the user gave (what `rag serve` and llm.model call it)
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = DEFAULT_TARGETS
    epochs: float = 1.0
    lr: float = 2e-4
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 2048
    warmup: float = 0.05
    save_steps: int = 50
    seed: int = 0

    def fingerprint(self, data_digest: str) -> dict[str, Any]:
        """What must match for a checkpoint to be resumed (the output folder may move)."""
        keys = asdict(self)
        keys.pop("out")
        keys.pop("data")
        keys["targets"] = list(self.targets)
        return {**keys, "data_sha256": data_digest}


@dataclass
class TrainResult:
    adapter: Path
    steps: int
    seconds: float
    train_examples: int
    validation_examples: int
    skipped_too_long: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)
    validation_losses: list[tuple[float, float]] = field(default_factory=list)  # (epoch, validation loss)
    resumed_from: str | None = None
    model: Any = None  # the trained peft model, in memory
    tokenizer: Any = None


# ---- what vLLM accepts -----------------------------------------------------------------------
def vllm_problems(adapter_config: dict[str, Any], weight_names: Sequence[str] = ()) -> list[str]:
    """Reasons vLLM's LoRA loader would refuse (or silently mis-serve) an adapter; empty if none."""
    cfg = adapter_config
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}; vLLM serves LoRA adapters only")
    if cfg.get("r") not in VLLM_LORA_RANKS:
        problems.append(f"rank {cfg.get('r')} is not one of vLLM's ranks {', '.join(map(str, VLLM_LORA_RANKS))}")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save={cfg['modules_to_save']} (full copies of modules; vLLM refuses them)")
    if cfg.get("use_dora"):
        problems.append("use_dora=True (vLLM does not serve DoRA)")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']!r} (vLLM does not serve LoRA biases)")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(("pissa", "olora", "loftq", "corda", "eva")):
        problems.append(f"init_lora_weights={init!r} changes the base weights; vLLM cannot serve it")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        problems.append("per-module rank_pattern/alpha_pattern (vLLM uses one rank and alpha per adapter)")
    if cfg.get("target_parameters"):
        problems.append("target_parameters (LoRA on raw parameters) is not served by vLLM")
    resized = [n for n in weight_names if n.endswith(("embed_tokens.weight", "lm_head.weight", "wte.weight"))]
    if resized:
        problems.append(f"the adapter carries full embedding/output weights ({resized[0]}): no new tokens allowed")
    return problems


def check_adapter(path: Path) -> dict[str, Any]:
    """The adapter_config of a saved adapter folder, or TrainError naming what vLLM would refuse."""
    path = Path(path)
    config_file = path / "adapter_config.json"
    weights = path / "adapter_model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise TrainError(
            f"{path} is not a peft adapter folder (needs adapter_config.json and adapter_model.safetensors)"
        )
    from safetensors import safe_open

    config = json.loads(config_file.read_text(encoding="utf-8"))
    with safe_open(str(weights), framework="pt") as fh:
        names = list(fh.keys())
    problems = vllm_problems(config, names)
    if problems:
        raise TrainError(f"{path}: vLLM would not serve this adapter: " + "; ".join(problems))
    return config


# ---- tokenization ---------------------------------------------------------------------------
def encode(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> dict[str, list[int]] | None:
    """input_ids and labels for one conversation: -100 everywhere but the assistant's answer.
    None when it is longer than `max_length` (cutting it would cut the answer or the sources)."""
    prompt = _ids(tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True))
    full = _ids(tokenizer.apply_chat_template(messages, return_dict=True))
    if full[: len(prompt)] != prompt:
        raise TrainError(
            "the base model's chat template does not render a conversation as its prompt followed by the "
            "answer, so the answer tokens cannot be told apart; use an instruct model with a standard template"
        )
    if len(full) > max_length:
        return None
    return {
        "input_ids": full,
        "attention_mask": [1] * len(full),
        "labels": [IGNORE] * len(prompt) + full[len(prompt) :],
    }


def _ids(encoded: Any) -> list[int]:
    ids = encoded["input_ids"]
    return list(ids[0] if ids and isinstance(ids[0], list) else ids)


class _Collator:
    """Pads a batch (labels with -100) and names the positions whose logits the loss needs."""

    def __init__(self, tokenizer: Any, keep_logits: bool) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE)
        self.keep_logits = keep_logits

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, Any]:
        batch = self.pad(features)
        if self.keep_logits:
            batch["logits_to_keep"] = _scored_positions(batch["labels"])
        return batch


def _scored_positions(labels: Any) -> Any:
    """Positions t whose next token is scored in any row of the batch (logits at t predict t+1)."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(-1)


def answer_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Mean cross-entropy over answer tokens; works with full logits or only the scored positions."""
    import torch.nn.functional as F

    logits = outputs.logits
    shifted = labels[:, 1:]
    if logits.shape[1] == labels.shape[1]:
        logits, targets = logits[:, :-1], shifted
    else:
        targets = shifted[:, _scored_positions(labels)]
    total = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE, reduction="sum"
    )
    count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
    return total / count


# ---- training ------------------------------------------------------------------------------
def train(config: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Train (or resume) and save the adapter to `config.out`.  `callbacks`: transformers
    TrainerCallbacks, e.g. a progress bar."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, Trainer, set_seed

    _check_rank(config.rank)
    started = time.perf_counter()
    data_digest = hashlib.sha256(Path(config.data).read_bytes()).hexdigest() if Path(config.data).is_file() else ""
    splits = load_sft(Path(config.data))
    checkpoints = Path(config.out) / "checkpoints"
    resume = _prepare_output(config, checkpoints, data_digest)
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    if not getattr(tokenizer, "chat_template", None):
        raise TrainError(f"base model {config.base!r} has no chat template; train an instruct/chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # reuse a token: adding one would change the vocabulary
    train_set, skipped = _encode_all(tokenizer, splits["train"], config.max_length)
    val_set, skipped_val = _encode_all(tokenizer, splits["validation"], config.max_length)
    if not train_set:
        raise TrainError(f"every training example is longer than --max-length {config.max_length} tokens")
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    model = AutoModelForCausalLM.from_pretrained(config.base, dtype=torch.bfloat16 if bf16 else torch.float32)
    vocab = model.get_input_embeddings().weight.shape[0]
    model = _with_lora(model, config)
    keep_logits = "logits_to_keep" in _forward_params(model)
    trainer = Trainer(
        model=model,
        args=_arguments(config, checkpoints, bool(val_set), on_gpu, bf16),
        train_dataset=train_set,
        eval_dataset=val_set or None,
        data_collator=_Collator(tokenizer, keep_logits),
        compute_loss_func=answer_loss,
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # callers report progress through their own callbacks
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if model.get_input_embeddings().weight.shape[0] != vocab:
        raise TrainError("the vocabulary changed during training; vLLM serves adapters on the base vocabulary only")
    history = trainer.state.log_history
    result = TrainResult(
        adapter=Path(config.out),
        steps=trainer.state.global_step,
        seconds=round(time.perf_counter() - started, 1),
        train_examples=len(train_set),
        validation_examples=len(val_set),
        skipped_too_long=skipped + skipped_val,
        losses=[(h["step"], h["loss"]) for h in history if "loss" in h],
        validation_losses=[(round(h["epoch"], 2), h["eval_loss"]) for h in history if "eval_loss" in h],
        resumed_from=resume.name if resume else None,
        model=model,
        tokenizer=tokenizer,
    )
    save_adapter(model, config, result, data_digest)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return result


def _check_rank(rank: int) -> None:
    if rank not in VLLM_LORA_RANKS:
        raise TrainError(f"--rank {rank}: vLLM serves ranks {', '.join(map(str, VLLM_LORA_RANKS))} only")


def _prepare_output(config: TrainConfig, checkpoints: Path, data_digest: str) -> Path | None:
    return prepare_checkpoints(Path(config.out), config.fingerprint(data_digest), "adapter_config.json", "adapter")


def prepare_checkpoints(out: Path, fingerprint: dict[str, Any], finished: str, what: str) -> Path | None:
    """The checkpoint in <out>/checkpoints to resume from, if any; refuses to mix runs, or to
    overwrite a finished model (one whose `finished` file is in `out`)."""
    checkpoints = out / "checkpoints"
    run_file = checkpoints / RUN_FILE
    found = sorted(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1]))
    if found and run_file.is_file():
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        if previous != fingerprint:
            changed = sorted(k for k in fingerprint if previous.get(k) != fingerprint[k])
            raise TrainError(
                f"{checkpoints} holds checkpoints of a run with different {', '.join(changed)}; "
                f"delete that folder to start over, or train into another --out"
            )
        return found[-1]
    if (out / finished).is_file():
        raise TrainError(f"{out} already holds a trained {what}; choose another --out or delete it first")
    checkpoints.mkdir(parents=True, exist_ok=True)
    run_file.write_text(json.dumps(fingerprint, indent=2), encoding="utf-8")
    return None


def _encode_all(tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int) -> tuple[list, int]:
    encoded = [encode(tokenizer, c, max_length) for c in conversations]
    kept = [e for e in encoded if e is not None]
    return kept, len(encoded) - len(kept)


def _with_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise TrainError(f"--targets {','.join(config.targets)}: {exc}. This model's linear layers: {names}") from exc


def _forward_params(model: Any) -> set[str]:
    import inspect

    return set(inspect.signature(model.get_base_model().forward).parameters)


def _arguments(config: TrainConfig, checkpoints: Path, validate: bool, on_gpu: bool, bf16: bool) -> Any:
    return training_arguments(
        config,
        checkpoints,
        validate,
        gradient_accumulation_steps=config.grad_accum,
        train_sampling_strategy="group_by_length" if config.batch_size > 1 else "random",
        use_cpu=not on_gpu,
        bf16=bf16,
    )


def training_arguments(config: Any, checkpoints: Path, validate: bool, **overrides: Any) -> Any:
    """The Trainer settings every `rag tune` run shares: `config`'s epochs, steps, rate, warmup,
    batch, checkpoint interval and seed; a log line per step; a validation loss per epoch; one
    checkpoint kept; no reporting services, no tqdm (callers draw their own bar)."""
    from transformers import TrainingArguments

    settings: dict[str, Any] = {
        "output_dir": str(checkpoints),
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps or -1,
        "learning_rate": config.lr,
        "warmup_steps": config.warmup,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "logging_steps": 1,
        "eval_strategy": "epoch" if validate else "no",
        "prediction_loss_only": True,
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 1,
        "seed": config.seed,
        "data_seed": config.seed,
        "remove_unused_columns": False,
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    return TrainingArguments(**(settings | overrides))


def publish(out: Path, write: Callable[[Path], None], record: dict[str, Any], last: str = TRAINING_FILE) -> None:
    """`write(folder)` into a temporary sibling of `out`, `record` beside it as training.json, then
    everything moved into `out`, `last` at the end: once `last` is there the folder is complete (a
    finished model that prepare_checkpoints lets no later run overwrite; an adapter vLLM can load)."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    write_json(tmp / TRAINING_FILE, record)
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(tmp.iterdir(), key=lambda p: (p.name == last, p.name)):
        if (out / item.name).is_dir():
            shutil.rmtree(out / item.name)
        os.replace(item, out / item.name)
    tmp.rmdir()


def save_adapter(model: Any, config: TrainConfig, result: TrainResult, data_digest: str) -> None:
    """Check, then write the adapter folder atomically: a half-written adapter is never left behind."""
    lora_config = model.peft_config["default"].to_dict()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    problems = vllm_problems(lora_config, names)
    if problems:
        raise TrainError("refusing to save an adapter vLLM would not serve: " + "; ".join(problems))
    record = {
        "base": config.base_name or config.base,
        "base_path": config.base,
        "data": str(config.data),
        "data_sha256": data_digest,
        **{k: v for k, v in config.fingerprint(data_digest).items() if k not in ("base", "base_name", "data_sha256")},
        "steps": result.steps,
        "seconds": result.seconds,
        "train_examples": result.train_examples,
        "validation_examples": result.validation_examples,
        "skipped_too_long": result.skipped_too_long,
        "final_train_loss": result.losses[-1][1] if result.losses else None,
        "validation_losses": result.validation_losses,
    }

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        check_adapter(folder)

    publish(Path(config.out), write, record, last="adapter_config.json")
