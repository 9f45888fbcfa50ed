"""Snakemake entry of rule normalise (one subject)."""

from fedglioma.pipeline import normalise
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        normalise,
        in_dir=snakemake.input.step,
        out_dir=snakemake.output.step,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.cfg),
    )
