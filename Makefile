# Kiln's commands. `make up` and `make test` are the two a new user needs; both install what is
# missing first (deploy/local/bootstrap.sh), so a fresh machine needs nothing by hand.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-deps
GEN := gen
PROTO_FILES := $(shell find protos/kiln -name '*.proto' | sort)
export PYTHONPATH := $(CURDIR)/$(GEN):$(CURDIR)

.PHONY: help bootstrap protos up start down demo test lint fmt bench docs-config envoy-config clean

help:
	@echo "make up           start the whole suite in the foreground (Ctrl-C stops it)"
	@echo "make up DETACH=1  the same in the background (also: make start); make down stops it"
	@echo "make demo         a tour of every API against the suite make up runs"
	@echo "make test         run the test suite (PYTEST_ARGS=... to narrow it)"
	@echo "make lint         ruff, mypy, the configuration page check, buf lint, buf format"
	@echo "make fmt          ruff format and fixes, buf format"
	@echo "make bench        run the benchmarks, write bench/results/*.json"
	@echo "make protos       regenerate Python code and the descriptor set in gen/"
	@echo "make docs-config  regenerate docs/configuration.md from services/runtime/config.py"
	@echo "make envoy-config regenerate the Envoy edge (deploy/k8s/base/envoy/) from the protos"

bootstrap: $(STAMP)

$(STAMP): pyproject.toml deploy/local/bootstrap.sh deploy/local/apt-packages.txt
	@bash deploy/local/bootstrap.sh "$(VENV)"
	@touch $(STAMP)

protos: $(GEN)/kiln.binpb

# Generated code is not committed: every entry point (up, test, lint, the image) generates it.
$(GEN)/kiln.binpb: $(STAMP) $(PROTO_FILES) protos/buf.yaml
	@rm -rf $(GEN) && mkdir -p $(GEN)
	@$(PY) -m grpc_tools.protoc -Iprotos \
		-I"$$($(PY) -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')" \
		--python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) \
		--descriptor_set_out=$(GEN)/kiln.binpb --include_imports --include_source_info \
		$(PROTO_FILES)
	@find $(GEN)/kiln -type d -exec touch {}/__init__.py \;
	@echo "generated $(GEN)/ from $(words $(PROTO_FILES)) proto files"

# DETACH=1 runs the same supervisor in the background and returns once everything is healthy.
up: protos
	@$(PY) -m deploy.local.launcher $(if $(filter-out 0 no false,$(DETACH)),--detach,)

start:
	@$(MAKE) --no-print-directory up DETACH=1

down: $(STAMP)
	@$(PY) -m deploy.local.launcher --stop

# Runs against the suite `make up` started (same KILN_* variables); DEMO_ARGS=--json etc.
demo: protos
	@$(PY) -m deploy.local.demo $(DEMO_ARGS)

test: protos
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m deploy.local.configdoc --check
	$(PY) -m gateway.apis.sidefx_docs --check
	$(PY) -m deploy.envoy.generate --check
	cd protos && ../$(VENV)/bin/buf lint && ../$(VENV)/bin/buf format --exit-code -d

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	cd protos && ../$(VENV)/bin/buf format -w

bench: protos
	@$(PY) -m bench

# docs/configuration.md is generated from services/runtime/config.py; lint and a test fail when
# the committed page is stale.
docs-config: protos
	@$(PY) -m deploy.local.configdoc --write
	@$(PY) -m gateway.apis.sidefx_docs --write

# The Envoy edge's configuration and descriptor set (docs/envoy.md), generated from the
# descriptor set and committed; lint and a test fail when they are stale.
envoy-config: protos
	@$(PY) -m deploy.envoy.generate

clean:
	rm -rf $(GEN) .pytest_cache .mypy_cache .ruff_cache
