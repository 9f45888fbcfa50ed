"""Snakemake entry of rule qc_subject: QC figure and row of one subject."""

from fedglioma.pipeline import qc_subject
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        qc_subject,
        step_dir=snakemake.input.step,
        out_png=snakemake.output.png,
        out_json=snakemake.output.row,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.cfg),
    )
