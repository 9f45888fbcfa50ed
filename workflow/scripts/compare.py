"""Snakemake entry of rule compare: federated vs baselines on the external site (its scope)."""

from fedglioma.pipeline import compare
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        compare,
        metrics=list(snakemake.input.metrics),
        predictions=list(snakemake.input.predictions),
        models=list(snakemake.params.models),
        labels=snakemake.input.labels,
        out_tsv=snakemake.output.table,
        site=snakemake.wildcards.site,
        evaluation_cfg=dict(snakemake.params.evaluation),
        endpoints_cfg=dict(snakemake.params.endpoints),
    )
