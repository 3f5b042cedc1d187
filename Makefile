# `make serve` and `make test` each bootstrap .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The local FHIR server (Medplum's router, demo/fhir_server): `make demo` runs it, and so do
# the integration tests.
FHIR_SERVER_DIR := demo/fhir_server
NODE_STAMP := $(FHIR_SERVER_DIR)/node_modules/.installed

.PHONY: serve demo test lint fuzz bench bench-prefetch bench-audit clean

# Ports of `make serve` and `make demo` (the service, the demo's FHIR server, page and
# SMART authorization server).
PORT ?= 8080
FHIR_PORT ?= 8090
PAGE_PORT ?= 8070
SMART_PORT ?= 8060

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installed once per package-lock change; without npm the FHIR server tests skip (outside CI).
$(NODE_STAMP): $(FHIR_SERVER_DIR)/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $(FHIR_SERVER_DIR) --no-audit --no-fund --loglevel=error && touch $@; \
	else \
		echo "npm not found: tests that need the FHIR server will be skipped"; \
	fi

serve: $(STAMP)
	@echo "Demo service on http://127.0.0.1:$(PORT) (development settings: auth optional, loopback FHIR servers allowed)"
	@echo "  discovery:  curl http://127.0.0.1:$(PORT)/cds-services"
	@echo "  call:       curl -X POST -H 'Content-Type: application/json' \\"
	@echo "                -d @fixtures/requests/order-sign__e0784-insulin__covered.json \\"
	@echo "                http://127.0.0.1:$(PORT)/cds-services/infusion-pump-coverage-order-sign"
	@echo "  health:     curl http://127.0.0.1:$(PORT)/readyz"
	CDS_AUTH=optional CDS_FHIR_SERVERS=http://127.0.0.1,http://localhost \
		CDS_CORS_ORIGINS=https://sandbox.cds-hooks.org \
		$(BIN)/infusion-pump-cds serve --host 127.0.0.1 --port $(PORT) --workers 2

# The local FHIR server loaded with patients, the SMART authorization server, the service
# (with its documentation app) and the try-it page; Ctrl-C stops all.
demo: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m demo.run --port $(PORT) --fhir-port $(FHIR_PORT) --page-port $(PAGE_PORT) \
		--smart-port $(SMART_PORT)

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

# A longer fuzz than the suite's (SCALE x its examples, SEED): requests, statuses,
# distinct failures, slowest answer.
SCALE ?= 20
SEED ?= 1
fuzz: $(STAMP)
	$(BIN)/python -m tests.fuzz --scale $(SCALE) --seed $(SEED)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Every performance figure with its floor and ratio, in one interleaved run (~3 min).
bench: $(STAMP)
	$(BIN)/python bench/all_figures.py

bench-prefetch: $(STAMP)
	$(BIN)/python bench/bench_prefetch_fallback.py

bench-audit: $(STAMP)
	$(BIN)/python bench/bench_audit_write.py

clean:
	rm -rf $(VENV) instance .pytest_cache $(FHIR_SERVER_DIR)/node_modules
