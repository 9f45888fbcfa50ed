"""Snakemake entry of rule baseline_validate: a baseline model on one site's validation split."""

from fedglioma.pipeline import validate
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        validate,
        global_model=snakemake.input.model,
        local_state=None,
        files=list(snakemake.input.files),
        labels=snakemake.input.labels,
        qc_table=snakemake.input.qc,
        out_json=snakemake.output.metrics,
        site=snakemake.wildcards.site,
        round_=1,
        model_cfg=dict(snakemake.params.model),
        train_cfg=dict(snakemake.params.train),
        federated_cfg={**dict(snakemake.params.federated), "site_local_patterns": []},
        qc_cfg=dict(snakemake.params.qc),
        threads=snakemake.threads,
    )
