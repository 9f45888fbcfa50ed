"""Snakemake entry of rule import_subject: checked import and reorientation of one subject."""

from fedglioma.pipeline import import_subject
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        import_subject,
        row=snakemake.params.row,
        subject=snakemake.wildcards.subject,
        out_dir=snakemake.output.step,
        layout_options=dict(snakemake.params.layout_options),
    )
