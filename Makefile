# The two commands a newcomer types. Each creates the virtualenv when it is missing.
#   make run    data -> tokenizer -> training -> a sample chat  (`guppy run`)
#   make test   the test suite and the linter (what CI runs)

VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: run test setup vendor clean

run: setup
	$(BIN)/guppy run

test: setup vendor
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

setup: $(VENV)/.installed

# torch first, pinned: it installs the CPU build from a local wheel where one is offered,
# and an unpinned torch would pull a multi-GB CUDA build instead.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,serve,export]"
	touch $@

# `guppy export web` copies these into its folder, so that the page fetches nothing from another
# host and the export itself downloads nothing. Pinned: the .wasm must be the build of
# onnxruntime-web that this transformers.js bundles (its package.json names the version).
TRANSFORMERS_JS = @huggingface/transformers@4.3.2
ORT_WEB         = onnxruntime-web@1.31.0-dev.20260914-8d85527a0
WEB_VENDOR      = guppylm/export/vendor
ORT_WASM        = package/dist/ort-wasm-simd-threaded.asyncify

vendor: $(WEB_VENDOR)/VERSIONS

$(WEB_VENDOR)/VERSIONS: Makefile
	rm -rf $(WEB_VENDOR) $(WEB_VENDOR).tmp && mkdir -p $(WEB_VENDOR).tmp/npm
	cd $(WEB_VENDOR).tmp/npm && npm pack --silent $(TRANSFORMERS_JS) $(ORT_WEB) >/dev/null
	cd $(WEB_VENDOR).tmp && tar -xzf npm/huggingface-transformers-*.tgz \
	    package/dist/transformers.min.js package/LICENSE \
	  && mv package/dist/transformers.min.js . && mv package/LICENSE LICENSE.transformers.js \
	  && rm -rf package
	cd $(WEB_VENDOR).tmp && tar -xzf npm/onnxruntime-web-*.tgz \
	    $(ORT_WASM).mjs $(ORT_WASM).wasm package/package.json \
	  && mv $(ORT_WASM).mjs $(ORT_WASM).wasm . \
	  && mv package/package.json onnxruntime-web.package.json \
	  && rm -rf package npm
	echo "$(TRANSFORMERS_JS) $(ORT_WEB)" > $(WEB_VENDOR).tmp/VERSIONS
	mv $(WEB_VENDOR).tmp $(WEB_VENDOR)

clean:
	rm -rf $(VENV) data runs $(WEB_VENDOR)
