"""Snakemake entry of the per-subject preprocessing rules on step folders (coregister, skullstrip,
register_atlas, n4, normalise): the rule's name is the step, the same route as the subcommands."""

from fedglioma.preprocess.steps import run_step
from fedglioma.smk import run

if "snakemake" in globals():
    run(
        snakemake,
        run_step,
        step=snakemake.rule,
        in_dir=snakemake.input.step,
        out_dir=snakemake.output.step,
        site=snakemake.wildcards.site,
        subject=snakemake.wildcards.subject,
        params=dict(snakemake.params.cfg),
        declared=snakemake.params.declared,
        template_transform=snakemake.input.get("template_transform"),
    )
