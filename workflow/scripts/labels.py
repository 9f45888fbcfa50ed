"""Snakemake entry of rule labels: harmonise one site's clinical table and summarise it."""

from fedglioma.pipeline import site_labels_and_summary
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        site_labels_and_summary,
        row=snakemake.params.row,
        clinical_cfg=snakemake.params.clinical,
        out_labels=snakemake.output.labels,
        out_summary=snakemake.output.summary,
        layout_options=snakemake.params.layout_options,
    )
