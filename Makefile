# The two entry points of the README. Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Main job: compile the bundled default model for x86 and check it bit-exactly against ONNX Runtime.
demo: $(STAMP)
	$(PY) -m bnn_tvm compile --target x86 -o build/digits_x86.so
	$(PY) -m bnn_tvm verify --target x86

test: $(STAMP)
	$(PY) -m pytest -q
