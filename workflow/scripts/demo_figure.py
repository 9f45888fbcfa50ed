"""Snakemake entry of rule demo_figure: one synthetic subject of a demo site."""

from fedglioma.smk import run
from fedglioma.synth.figure import subject_figure

if "snakemake" in globals():
    run(
        snakemake,
        subject_figure,
        site_dir=snakemake.input.site_dir,
        out_png=snakemake.output.png,
        site=snakemake.wildcards.site,
    )
