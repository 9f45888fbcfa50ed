"""Snakemake entry of rule training_file: crop/resample one subject to the network grid."""

from fedglioma.pipeline import training_file
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        training_file,
        in_dir=snakemake.input.step,
        out_npz=snakemake.output.npz,
        out_grid=snakemake.output.grid,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        cfg=dict(snakemake.params.grid),
    )
