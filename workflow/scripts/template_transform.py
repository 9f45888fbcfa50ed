"""Snakemake entry of rule template_transform (one template pair, no site data)."""

from fedglioma.preprocess.templates import template_transform
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        template_transform,
        source=snakemake.wildcards.source,
        target=snakemake.wildcards.target,
        out_dir=snakemake.output.folder,
    )
