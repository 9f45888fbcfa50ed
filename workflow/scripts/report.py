"""Snakemake entry of rule report: the standalone HTML report."""

from fedglioma.pipeline import report
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        report,
        inputs={k: v for k, v in snakemake.input.items()},
        out_html=snakemake.output.html,
        out_headline=snakemake.output.headline,
        config=dict(snakemake.params.config),
        external=snakemake.params.external,
        sites=list(snakemake.params.sites),
        models=list(snakemake.params.models),
    )
