# `make serve` and `make test` each bootstrap .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The Medplum-based FHIR server the integration tests start (tests/fhir_server).
FHIR_SERVER_DIR := tests/fhir_server
NODE_STAMP := $(FHIR_SERVER_DIR)/node_modules/.installed

.PHONY: serve test lint fuzz bench bench-prefetch bench-audit clean

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
	@echo "Demo service on http://127.0.0.1:8080 (development settings: auth optional, loopback FHIR servers allowed)"
	@echo "  discovery:  curl http://127.0.0.1:8080/cds-services"
	@echo "  call:       curl -X POST -H 'Content-Type: application/json' \\"
	@echo "                -d @fixtures/requests/order-sign__e0784-insulin__covered.json \\"
	@echo "                http://127.0.0.1:8080/cds-services/infusion-pump-coverage-order-sign"
	CDS_AUTH=optional CDS_FHIR_SERVERS=http://127.0.0.1,http://localhost \
		CDS_CORS_ORIGINS=https://sandbox.cds-hooks.org \
		$(BIN)/infusion-pump-cds serve --host 127.0.0.1 --port 8080 --workers 2

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
