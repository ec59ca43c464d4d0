# The two entry points of the README. Both create the virtual environment on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test system-deps
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Main job: compile the bundled default model for x86, check it bit-exactly against ONNX Runtime,
# and cross-compile it for the Raspberry Pi 3B (Cortex-A53, 64-bit OS).
demo: $(STAMP) system-deps
	$(PY) -m bnn_tvm compile --target x86 -o build/digits_x86.so
	$(PY) -m bnn_tvm verify --target x86
	$(PY) -m bnn_tvm compile --target rasp3b -o build/digits_rasp3b.so

# Cross compilers, qemu-user and Debian's arm64 lists for the emulated board (root or sudo;
# a no-op when present). Without them the ARM tests skip or fail with the install command.
system-deps:
	bash tools/install_system_deps.sh || echo "warning: system packages not installed; ARM tests will skip or fail"

test: $(STAMP) system-deps
	$(PY) -m pytest -q
