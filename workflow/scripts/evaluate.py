"""Snakemake entry of rule evaluate: a model on the external site (external site scope)."""

from fedglioma.pipeline import evaluate
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        evaluate,
        final=snakemake.input.final,
        models=list(snakemake.input.globals),
        files=list(snakemake.input.files),
        grids=list(snakemake.input.grids),
        steps=list(snakemake.input.steps),
        labels=snakemake.input.labels,
        subjects=list(snakemake.params.subjects),
        site=snakemake.wildcards.site,
        model_name=snakemake.wildcards.model,
        out_predictions=snakemake.output.predictions,
        out_segmentation=snakemake.output.segmentation,
        out_masks=snakemake.output.masks,
        out_metrics=snakemake.output.metrics,
        out_figures=snakemake.output.figures,
        model_cfg=dict(snakemake.params.model),
        evaluation_cfg=dict(snakemake.params.evaluation),
        endpoints_cfg=dict(snakemake.params.endpoints),
        threads=snakemake.threads,
    )
