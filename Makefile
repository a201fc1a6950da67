# hearth: two entry points for a fresh machine.
#   make run   fetch the models if missing, build, start a node with the default model, chat
#   make test  fetch the models if missing, build, and run every test
# Everything builds with the release profile so dependencies compile once for both.

CARGO ?= cargo
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
HEARTH := $(TARGET_DIR)/release/hearth

.PHONY: run test build models js clients vulkan fixtures bench fuzz screenshots

build:
	$(CARGO) build --release --workspace --bins

models: build
	HEARTH_BIN=$(HEARTH) bash scripts/fetch-models

run: models
	HEARTH_BIN=$(HEARTH) bash scripts/run-node-and-chat

# JavaScript's Automerge, for the test that reads hearth's history documents in another language.
js:
	npm ci --prefix tests/js --no-audit --no-fund

# Real client libraries (the `ollama` Python package), in a private virtual environment.
clients:
	python3 -m venv .cache/clients
	.cache/clients/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# lavapipe, Mesa's software Vulkan driver: the GPU tests run their shaders on it (wgpu sees it as
# a GPU adapter). Installed with apt-get when missing and run as root.
vulkan:
	@ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq mesa-vulkan-drivers; \
	  else \
	    echo "the GPU tests need Mesa's Vulkan drivers: apt-get install mesa-vulkan-drivers" >&2; exit 1; \
	  fi; }

test: models js clients vulkan
	$(CARGO) test --release --workspace --no-fail-fast

# Regenerate the llama.cpp reference fixtures (builds llama.cpp; not needed to run tests).
fixtures:
	bash scripts/make-reference-fixtures

bench: models
	$(HEARTH) bench -m smollm2-135m -t 1,2 -s 4
	$(HEARTH) bench -m gemma3-270m -t 1,2 -s 4

# Fuzz the protocol decoders, FUZZ_SECONDS each (own workspace and target dir under fuzz/).
fuzz:
	bash scripts/fuzz

# The desktop client under Xvfb against a real node: PNGs of the chat mid-stream and of the mesh
# view in gui/screenshots/, and its footprint (window mapped, idle RSS and CPU).
screenshots: models
	bash scripts/gui-screenshots
