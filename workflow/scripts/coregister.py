"""Snakemake entry of rule coregister (one subject)."""

from fedglioma.pipeline import coregister
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        coregister,
        in_dir=snakemake.input.step,
        out_dir=snakemake.output.step,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.cfg),
    )
