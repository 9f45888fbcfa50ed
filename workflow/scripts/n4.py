"""Snakemake entry of rule n4 (one subject)."""

from fedglioma.pipeline import n4
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        n4,
        in_dir=snakemake.input.step,
        out_dir=snakemake.output.step,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.cfg),
    )
