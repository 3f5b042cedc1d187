# `make serve` and `make test` each bootstrap .venv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)
	@echo "Demo service on http://127.0.0.1:8080 (development settings: auth optional, loopback FHIR servers allowed)"
	@echo "  discovery:  curl http://127.0.0.1:8080/cds-services"
	@echo "  call:       curl -X POST -H 'Content-Type: application/json' \\"
	@echo "                -d @fixtures/requests/order-sign__e0784-insulin__covered.json \\"
	@echo "                http://127.0.0.1:8080/cds-services/infusion-pump-coverage-order-sign"
	CDS_AUTH=optional CDS_FHIR_SERVERS=http://127.0.0.1,http://localhost \
		$(BIN)/infusion-pump-cds serve --host 127.0.0.1 --port 8080 --workers 2

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/bench_order_sign.py

clean:
	rm -rf $(VENV) instance .pytest_cache
