# External evaluation, inside the external site's scope: inference, native-space masks,
# per-subject predictions (stay at the site) and site-aggregated metrics and figures (leave it).


rule evaluate:
    input:
        unpack(get_evaluate_inputs),
    output:
        predictions="results/sites/{site}/evaluation/{model}/predictions.tsv",
        segmentation="results/sites/{site}/evaluation/{model}/segmentation.tsv",
        masks=directory("results/sites/{site}/evaluation/{model}/masks"),
        metrics="results/sites/{site}/evaluation/{model}/metrics.json",
        figures=directory("results/sites/{site}/evaluation/{model}/figures"),
    log:
        "logs/evaluate/{site}/{model}.log",
    benchmark:
        "logs/benchmarks/evaluate/{site}/{model}.tsv"
    wildcard_constraints:
        site=EXTERNAL_SITE,
        model="federated|centralized|local-[A-Za-z0-9_-]+",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **SITE_SCOPE,
        mem_mb=6000,
    params:
        model_cfg=config["model"],
        evaluation_cfg=config["evaluation"],
        endpoints_cfg=config["endpoints"],
        subjects=get_evaluation_subjects,
    script:
        "../scripts/step.py"
