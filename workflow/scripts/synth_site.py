"""Snakemake entry of rule synth_site: generate one demo site."""

from fedglioma.smk import run
from fedglioma.synth import generate_demo_site

if "snakemake" in globals():
    run(
        snakemake,
        generate_demo_site,
        out_dir=snakemake.output.site_dir,
        site_index=snakemake.params.site_index,
        n_sites=snakemake.params.n_sites,
        n_subjects=snakemake.params.n_subjects,
        seed=snakemake.params.seed,
        strengths=dict(snakemake.params.strengths),
        template_transforms=dict(snakemake.input.items()),
    )
