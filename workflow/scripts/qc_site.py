"""Snakemake entry of rule qc_site: gather a site's QC table, summary and example figure."""

from fedglioma.pipeline import qc_site
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        qc_site,
        rows=list(snakemake.input.rows),
        out_tsv=snakemake.output.table,
        out_summary=snakemake.output.summary,
        out_example=snakemake.output.example,
        site=snakemake.wildcards.site,
        cfg=dict(snakemake.params.cfg),
    )
