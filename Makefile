# The README's two commands: `make demo` and `make test`. Both build .venv from uv.lock on a
# fresh machine (Python 3.10-3.12 and a path to PyPI are all they need).
PYTHON     ?= python3
UV_VERSION := 0.13.8
TOOLS      := .tools
UV         := $(TOOLS)/bin/uv
VENV       := .venv
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed-stamp
STORE      ?= lth-store
# uv uses the interpreter it is given and never downloads one.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON           := $(PYTHON)

# ffcv builds from source against OpenCV and libjpeg-turbo: its extra is installed only where
# they are (Debian/Ubuntu: apt-get install pkg-config libopencv-dev libturbojpeg0-dev).
FFCV_EXTRA = $(shell pkg-config --exists opencv4 libturbojpeg 2>/dev/null && echo --extra ffcv)

.PHONY: install demo test gpu-test gpu-wheels bench bench-tune lock clean docs

install: $(STAMP)

# uv itself, pinned, in a virtualenv of its own beside the project (no root, no change to the
# system Python, works where the system Python is "externally managed").
$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)

# Exactly the versions in uv.lock; --locked fails if pyproject.toml and the lock disagree.
# --compile-bytecode: every process that imports torch (each Ray worker, each test subprocess)
# otherwise compiles its sources again wherever .pyc files are not written (a read-only
# environment, PYTHONDONTWRITEBYTECODE): about 5 s a process here, against 30 s once.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@test -n "$(FFCV_EXTRA)" || echo "note: pkg-config finds no opencv4/libturbojpeg: skipping the ffcv extra"
	$(UV) sync --locked --compile-bytecode --extra test $(FFCV_EXTRA)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lth run configs/demo.yaml --store $(STORE)
	$(BIN)/lth analyze demo --store $(STORE)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# The GPU suite (pytest marker `gpu`): one module that needs only torch, torchvision and
# trainers/, so it also runs on a bare GPU machine without make or a venv (README, "GPU suite":
# PYTHONPATH=.:<.gpu-wheels/*.whl> python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py).
# Fails where no CUDA device is visible (tests/conftest.py); `make test` skips it there.
GPU_TESTS := tests/test_gpu.py
gpu-test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m gpu $(GPU_TESTS)

# pytest and its dependencies as wheels (the versions of uv.lock), for a GPU machine that has
# torch but no pytest: carried in .gpu-wheels/ (1.8 MB) and put on PYTHONPATH by
# benchmarks/gpu_session.sh. Python 3.12 needs no tomli or exceptiongroup.
GPU_WHEELS := pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 packaging==26.3 pygments==2.21.0 pytest-timeout==2.4.0
gpu-wheels: | $(UV)
	$(TOOLS)/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .gpu-wheels $(GPU_WHEELS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

# A sweep of 1,000 small jobs through `lth run` against Ray Tune running the same work
# (benchmarks/vs_tune.py, about 10 minutes on 2 cores). Tune is the `bench` extra, which
# `make test` does not install: this adds it to .venv.
bench-tune: $(STAMP)
	$(UV) sync --locked --compile-bytecode --extra test --extra bench $(FFCV_EXTRA)
	$(BIN)/python -m benchmarks.vs_tune

# Generated files, each checked by a test: the config field reference (from orchestrator/spec/)
# and the models' weight counts the planner reads without torch (from trainers/models.py).
docs: $(STAMP)
	$(BIN)/python -m orchestrator.config_reference > docs/config-reference.md
	$(BIN)/python -m trainers.model_catalog --write

# After editing dependencies in pyproject.toml: re-resolve and commit uv.lock.
lock: | $(UV)
	$(UV) lock

clean:
	rm -rf $(VENV) $(TOOLS) $(STORE)
