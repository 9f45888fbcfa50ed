"""Snakemake entry of rules centralized_train and local_only_train."""

from fedglioma.pipeline import train_baseline
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        train_baseline,
        init_model=snakemake.input.init,
        files=list(snakemake.input.files),
        labels=list(snakemake.input.labels) if not isinstance(snakemake.input.labels, str) else [snakemake.input.labels],
        qc_tables=list(snakemake.input.qc) if not isinstance(snakemake.input.qc, str) else [snakemake.input.qc],
        sites=list(snakemake.params.sites),
        out_model=snakemake.output.model,
        out_meta=snakemake.output.meta,
        rounds=int(snakemake.params.rounds),
        model_cfg=dict(snakemake.params.model),
        train_cfg=dict(snakemake.params.train),
        qc_cfg=dict(snakemake.params.qc),
        threads=snakemake.threads,
    )
