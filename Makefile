# Two entry points on a fresh clone: `make run` and `make test`. Both create .venv themselves and
# install every role (`.[all]`); a plain `pip install .` is the device role only (README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is installed first, on its own, so that the `torch>=2.4` dependency is already met and
# nothing pulls a multi-GB CUDA build: torch==2.13.0 resolves to the CPU build that pip finds in
# /opt/wheels on this machine (find-links). On a GPU box: make install TORCH_SPEC='torch'
TORCH_SPEC ?= torch==2.13.0

.PHONY: run test lint format install install-dev bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(if $(TORCH_SPEC),$(PIP) install -q '$(TORCH_SPEC)')
	$(PIP) install -q -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: install
	$(VENV)/bin/motionmask run --config configs/default.yaml

# The linter and the formatter (ruff, configured in pyproject.toml) over the whole tree; `make
# format` rewrites what `make lint` would refuse.
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# pytest exits 5 when it collects nothing: that is a failure here, never a pass.
test: install-dev lint
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; exit $$rc

bench: install-dev
	$(PY) -m bench.streamer_speed
	$(PY) -m bench.quality

clean:
	rm -rf $(VENV) runs bench/out
