"""Snakemake entry of rule preprocess_subject: the whole preprocessing chain of one subject (site scope),
the same call as `fedglioma preprocess-subject`."""

from pathlib import Path

from fedglioma.preprocess.chain import SubjectOutputs, preprocess_subject
from fedglioma.smk import run

if "snakemake" in globals():
    out = snakemake.output
    run(
        snakemake,
        preprocess_subject,
        row=snakemake.params.row,
        subject=snakemake.wildcards.subject,
        out=SubjectOutputs(Path(out.step).parent, Path(out.npz), Path(out.grid), Path(out.qc_png), Path(out.qc_row)),
        preprocess=dict(snakemake.params.preprocess),
        qc=dict(snakemake.params.qc),
        layout_options=dict(snakemake.params.layout_options),
        template_transform=snakemake.input.get("template_transform"),
    )
