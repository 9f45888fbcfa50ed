"""Snakemake entry of rule init_model: the seeded round-0 global model."""

from fedglioma.pipeline import init_model
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        init_model,
        out_model=snakemake.output.model,
        out_meta=snakemake.output.meta,
        model_cfg=dict(snakemake.params.model),
        seed=snakemake.params.seed,
    )
