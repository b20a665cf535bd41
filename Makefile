# The two entry points of the README. Each one sets up .venv/ (once) and then runs.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medad-installed
OUT    ?= out/demo

.PHONY: demo test system-deps clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## Score the bundled sample data (a CT DICOM series and an MR NIfTI) with the embedded demo model.
demo: $(STAMP)
	$(VENV)/bin/medad score sample_data --out $(OUT)
	@echo "results: $(OUT)/results.csv  report: $(OUT)/report.html"

## Optional system packages for the integration tests (Orthanc PACS, Chromium); tests skip what is missing.
system-deps:
	-bash scripts/install_system_deps.sh

## Run the whole test suite (CPU only, a few minutes).
test: $(STAMP) system-deps
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) out
