# The README's two commands: `make demo` and `make test`. Both create .venv and install
# everything on a fresh machine (torch/torchvision pinned as a pair in constraints.txt).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
STORE  ?= lth-store

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	@# ffcv is an optional extra: it builds from source against OpenCV and libjpeg-turbo.
	if pkg-config --exists opencv4 libturbojpeg; then \
		$(BIN)/python -m pip install -q -c constraints.txt -e '.[ffcv]'; \
	else echo "note: pkg-config finds no opencv4/libturbojpeg: skipping the ffcv extra"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lth run configs/demo.yaml --store $(STORE)
	$(BIN)/lth analyze demo --store $(STORE)

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(STORE)
