"""Snakemake entry of rule baseline_validate: a baseline model on one site's validation split."""

from fedglioma.pipeline import validate
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        validate,
        global_model=snakemake.input.model,
        local_state=None,
        training_set=snakemake.input.training_set,
        labels=snakemake.input.labels,
        out_json=snakemake.output.metrics,
        site=snakemake.wildcards.site,
        round_=1,
        model_cfg=dict(snakemake.params.model),
        train_cfg=dict(snakemake.params.train),
        federated_cfg={**dict(snakemake.params.federated), "site_local_patterns": []},
        threads=snakemake.threads,
    )
