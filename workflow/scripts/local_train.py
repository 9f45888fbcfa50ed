"""Snakemake entry of rule local_train: one site's training in one round (site scope)."""

from fedglioma.pipeline import local_train
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        local_train,
        global_model=snakemake.input.global_model,
        local_state=snakemake.input.get("local_state"),
        training_set=snakemake.input.training_set,
        labels=snakemake.input.labels,
        out_update=snakemake.output.params_update,
        out_sidecar=snakemake.output.params_sidecar,
        out_local=snakemake.output.local,
        site=snakemake.wildcards.site,
        round_=int(snakemake.wildcards.round),
        model_cfg=dict(snakemake.params.model),
        train_cfg=dict(snakemake.params.train),
        federated_cfg=dict(snakemake.params.federated),
        endpoints_cfg=dict(snakemake.params.endpoints),
        threads=snakemake.threads,
    )
