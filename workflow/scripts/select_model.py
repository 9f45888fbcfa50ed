"""Snakemake entry of rule select_model: pick the final round from sites' validation metrics."""

from fedglioma.pipeline import select_model
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        select_model,
        metrics=list(snakemake.input.metrics),
        out_json=snakemake.output.final,
        model_template=snakemake.params.model_template,
    )
