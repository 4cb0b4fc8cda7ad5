# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv on first use.
# `make floors` checks the declared dependency floors in a venv of its own (.ci/floors; CI runs it).
# torch is pinned for set-up only (a CPU build that installs from local disk here); the package itself
# asks for torch>=2.1.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
TIMM ?= timm==1.0.31
SMP ?= segmentation-models-pytorch==0.6.0

.PHONY: demo test floors venv clean

$(VENV)/.ready: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	# timm and segmentation_models_pytorch are parity references only; their dependencies would pull
	# torchvision, so none are installed (the tests load single files from them).
	$(PY) -m pip install -q --no-deps "$(TIMM)" "$(SMP)"
	touch $@

venv: $(VENV)/.ready

demo: venv
	$(PY) examples/demo.py
	$(PY) examples/train.py examples/tagging.yaml
	$(PY) examples/train_segmentation.py
	$(PY) examples/train_distillation.py
	$(PY) examples/train_longtail.py

test: venv
	$(PY) -m pytest -q

floors:
	PYTHON=$(PYTHON) TORCH="$(TORCH)" bash .ci/floors

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
