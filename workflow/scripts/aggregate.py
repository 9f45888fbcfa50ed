"""Snakemake entry of rule aggregate: server-side aggregation of one round's site updates."""

from fedglioma.pipeline import aggregate
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        aggregate,
        updates=list(snakemake.input.updates),
        previous=snakemake.input.previous,
        state=snakemake.input.get("state"),
        out_model=snakemake.output.model,
        out_meta=snakemake.output.meta,
        out_state=snakemake.output.state,
        round_=int(snakemake.wildcards.round),
        federated_cfg=dict(snakemake.params.federated),
    )
