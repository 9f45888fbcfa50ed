"""Snakemake entry of rule training_set: a site's training files after QC exclusion (site scope)."""

from fedglioma.pipeline import training_set
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        training_set,
        files=list(snakemake.input.files),
        qc_table=snakemake.input.qc,
        out_tsv=snakemake.output.manifest,
        site=snakemake.wildcards.site,
        qc_cfg=dict(snakemake.params.qc),
    )
