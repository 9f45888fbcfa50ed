"""The one Snakemake entry of every rule: run the rule's step (fedglioma.registry) with the job's named inputs,
outputs, params and wildcards as keyword arguments, the same function as its `fedglioma` subcommand."""

from fedglioma.registry import run_rule

if "snakemake" in globals():
    run_rule(snakemake)
