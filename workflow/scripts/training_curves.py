"""Snakemake entry of rule training_curves: per-round, per-site losses and validation metrics."""

from fedglioma.pipeline import training_curves
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        training_curves,
        sidecars=list(snakemake.input.sidecars),
        metrics=list(snakemake.input.metrics),
        out_tsv=snakemake.output.table,
        out_png=snakemake.output.png,
    )
