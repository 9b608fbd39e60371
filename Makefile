# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv on first use; re-running is a no-op install when nothing changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FLEXGEN_DATA_DIR ?= $(abspath ../shared/data)
export FLEXGEN_DATA_DIR

.PHONY: venv test test-slow demo clean

venv: $(STAMP)

# torch stays pinned through constraints.txt so that crfm-helm cannot swap in a
# CUDA build; torchvision is removed when it cannot import next to our torch
# (transformers imports it whenever it is installed).
$(STAMP): setup.cfg setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install -q -c constraints.txt -e ".[all]"
	$(PY) -c "import torchvision" >/dev/null 2>&1 || $(PY) -m pip uninstall -y -q torchvision
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

demo: $(STAMP)
	$(VENV)/bin/flexgen-eval demo

clean:
	rm -rf $(VENV) build *.egg-info
