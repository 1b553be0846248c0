# Kiln's commands. `make up` and `make test` are the two a new user needs; both install what is
# missing first (deploy/local/bootstrap.sh), so a fresh machine needs nothing by hand.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kiln-deps
GEN := gen
PROTO_FILES := $(shell find protos/kiln -name '*.proto' | sort)
export PYTHONPATH := $(CURDIR)/$(GEN):$(CURDIR)

.PHONY: help bootstrap protos up start down test lint fmt bench docs-config clean

help:
	@echo "make up        start the whole suite (DETACH=1 to run in the background)"
	@echo "make down      stop a suite started with DETACH=1 / make start"
	@echo "make test      run the test suite"
	@echo "make lint      ruff, mypy, buf lint, buf format"
	@echo "make bench     run the benchmarks, write bench/results/*.json"
	@echo "make protos    regenerate Python code and the descriptor set"

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

up: protos
	@$(PY) -m deploy.local.launcher $(if $(DETACH),--detach,)

start:
	@$(MAKE) --no-print-directory up DETACH=1

down: $(STAMP)
	@$(PY) -m deploy.local.launcher --stop

test: protos
	@$(PY) -m pytest $(PYTEST_ARGS)

lint: protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd protos && ../$(VENV)/bin/buf lint && ../$(VENV)/bin/buf format --exit-code -d

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
	cd protos && ../$(VENV)/bin/buf format -w

bench: protos
	@$(PY) -m bench

docs-config: $(STAMP)
	@$(PY) -m deploy.local.configdoc > docs/configuration.md

clean:
	rm -rf $(GEN) .pytest_cache .mypy_cache .ruff_cache
