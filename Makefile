# Two commands do all set-up on a fresh machine:
#   make train   create .venv, install treegrpo (CPU torch), train TreeGRPO on the toy world
#   make test    create .venv, install treegrpo with test extras, run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned first: 2.13.0 installs the CPU wheel from local disk here; an unpinned torch
# would pull a multi-GB CUDA build. On a GPU machine install your CUDA torch before `make`.
TORCH ?= torch==2.13.0

.PHONY: install train test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

train: install
	$(PY) tools/train.py configs/treegrpo_toy_shapes.py $(ARGS)

test: install
	$(PY) -m pytest tests $(ARGS)

clean:
	rm -rf $(VENV) work_dirs .pytest_cache
