"""Snakemake entry of rules centralized_train and local_only_train (inputs named ``<kind>_<site>``)."""

from fedglioma.pipeline import train_baseline
from fedglioma.smk import run

if "snakemake" in globals():
    sites = list(snakemake.params.sites)
    run(
        snakemake,
        train_baseline,
        init_model=snakemake.input.init,
        training_sets={s: getattr(snakemake.input, f"training_set_{s}") for s in sites},
        labels={s: getattr(snakemake.input, f"labels_{s}") for s in sites},
        out_models=list(snakemake.output.models),
        out_validation=list(snakemake.output.validation),
        name=snakemake.params.name,
        model_cfg=dict(snakemake.params.model),
        train_cfg=dict(snakemake.params.train),
        endpoints_cfg=dict(snakemake.params.endpoints),
        threads=snakemake.threads,
    )
