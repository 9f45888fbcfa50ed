"""Snakemake entry of rule validate: a global model on one site's validation split."""

from fedglioma.pipeline import validate
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        validate,
        global_model=snakemake.input.global_model,
        local_state=snakemake.input.local_state,
        training_set=snakemake.input.training_set,
        labels=snakemake.input.labels,
        out_json=snakemake.output.metrics,
        site=snakemake.wildcards.site,
        round_=int(snakemake.wildcards.round),
        model_cfg=dict(snakemake.params.model),
        train_cfg=dict(snakemake.params.train),
        federated_cfg=dict(snakemake.params.federated),
        endpoints_cfg=dict(snakemake.params.endpoints),
        threads=snakemake.threads,
    )
