# Baselines with the same model, seeds, training subjects and total epochs (rounds x
# epochs_per_round) as the federation, checkpointed and validated after every round and selected
# by the same rule (select_model), then evaluated on the same external site: centralized training
# on the pooled training sites (pools data by design: an upper bound that a real federation
# cannot run) and local-only training of each site in its own scope.


rule centralized_train:
    input:
        unpack(get_centralized_inputs),
    output:
        models=baseline_round_files("centralized", "model.safetensors"),
        metas=baseline_round_files("centralized", "model.json"),
        validation=centralized_validation_files(),
    log:
        "logs/centralized_train/train.log",
    benchmark:
        "logs/benchmarks/centralized_train/train.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **COORDINATOR_SCOPE,
        mem_mb=6000,
    params:
        model_cfg=config["model"],
        train_cfg=config["train"],
        endpoints_cfg=config["endpoints"],
        sites=TRAIN_SITES,
        name="centralized",
    script:
        "../scripts/step.py"


rule local_only_train:
    input:
        unpack(get_local_only_inputs),
    output:
        models=baseline_round_files("local_only", "model.safetensors"),
        metas=baseline_round_files("local_only", "model.json"),
        validation=baseline_round_files("local_only", "validation.json"),
    log:
        "logs/local_only_train/{site}.log",
    benchmark:
        "logs/benchmarks/local_only_train/{site}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **SITE_SCOPE,
        mem_mb=6000,
    params:
        model_cfg=config["model"],
        train_cfg=config["train"],
        endpoints_cfg=config["endpoints"],
        sites=get_site_list,
        name=lambda wildcards: wildcards.site,
    script:
        "../scripts/step.py"


rule centralized_select:
    input:
        metrics=centralized_validation_files(),
    output:
        final="results/baselines/centralized/final.json",
    log:
        "logs/centralized_select/select.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        **COORDINATOR_SCOPE,
    params:
        model_template=baseline_model_template("centralized"),
    script:
        "../scripts/step.py"


rule local_only_select:
    input:
        metrics=baseline_round_files("local_only", "validation.json"),
    output:
        final="results/sites/{site}/baselines/local_only/final.json",
    log:
        "logs/local_only_select/{site}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        **SITE_SCOPE,
    params:
        model_template=baseline_model_template("local_only"),
    script:
        "../scripts/step.py"


rule compare:
    input:
        unpack(get_compare_inputs),
    output:
        table=report(
            "results/sites/{site}/evaluation/comparison.tsv",
            caption="../report/comparison.rst",
            category="External evaluation",
            labels={"table": "federated vs centralized vs local-only"},
        ),
    log:
        "logs/compare/{site}.log",
    wildcard_constraints:
        site=EXTERNAL_SITE,
    conda:
        "../../envs/report.yaml"
    resources:
        **SITE_SCOPE,
    params:
        models=get_models,
        evaluation_cfg=config["evaluation"],
        endpoints_cfg=config["endpoints"],
    script:
        "../scripts/step.py"
