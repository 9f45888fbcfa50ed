"""Snakemake entry of rule skullstrip (one subject)."""

from fedglioma.pipeline import skullstrip
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        skullstrip,
        in_dir=snakemake.input.step,
        out_dir=snakemake.output.step,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.cfg),
        row=snakemake.params.row,
        threads=snakemake.threads,
    )
