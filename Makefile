# Two entry points (see README): `make demo` installs and runs the built-in benchmark,
# `make test` installs and runs the tests. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU machines: this torch build installs from local disk / a small CPU wheel. On a GPU machine,
# pass your own: `make demo TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`.
TORCH ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: demo test test-kernels install clean

$(BIN)/specbench: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,gguf]"
	touch $@

install: $(BIN)/specbench

demo: install
	$(BIN)/specbench run

test: install
	$(BIN)/python -m pytest -q

# The quick suite under each forced kernel choice and the timed one (tests/all_kernels.sh).
test-kernels: install
	PYTHON=$(BIN)/python tests/all_kernels.sh

clean:
	rm -rf $(VENV) build *.egg-info
