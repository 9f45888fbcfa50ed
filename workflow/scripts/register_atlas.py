"""Snakemake entry of rule register_atlas (one subject)."""

from fedglioma.pipeline import register_atlas
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        register_atlas,
        in_dir=snakemake.input.step,
        out_dir=snakemake.output.step,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.cfg),
        row=snakemake.params.row,
        threads=snakemake.threads,
    )
