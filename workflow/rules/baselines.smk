# Baselines with the same model, seeds and total epochs (rounds x epochs_per_round) as the
# federation, evaluated on the same external site: centralized training on the pooled training
# sites (pools data by design: an upper bound that a real federation cannot run) and local-only
# training of each site in its own scope.


rule centralized_train:
    input:
        unpack(get_centralized_inputs),
    output:
        model="results/baselines/centralized/model.safetensors",
        meta="results/baselines/centralized/model.json",
    log:
        "logs/centralized_train/train.log",
    benchmark:
        "logs/benchmarks/centralized_train/train.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
        mem_mb=6000,
    params:
        model=config["model"],
        train=config["train"],
        rounds=ROUNDS,
        sites=TRAIN_SITES,
    script:
        "../scripts/train_baseline.py"


rule local_only_train:
    input:
        unpack(get_local_only_inputs),
    output:
        model="results/sites/{site}/baselines/local_only/model.safetensors",
        meta="results/sites/{site}/baselines/local_only/model.json",
    log:
        "logs/local_only_train/{site}.log",
    benchmark:
        "logs/benchmarks/local_only_train/{site}.tsv"
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
        mem_mb=6000,
    params:
        model=config["model"],
        train=config["train"],
        rounds=ROUNDS,
        sites=get_site_list,
    script:
        "../scripts/train_baseline.py"


rule baseline_validate:
    input:
        unpack(get_baseline_validate_inputs),
    output:
        metrics="results/sites/{site}/baselines/{baseline}/validation.json",
    log:
        "logs/baseline_validate/{site}/{baseline}.log",
    wildcard_constraints:
        baseline="centralized|local_only",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        model=config["model"],
        train=config["train"],
        federated=config["federated"],
    script:
        "../scripts/baseline_validate.py"


rule centralized_select:
    input:
        metrics=expand(
            "results/sites/{site}/baselines/centralized/validation.json",
            site=TRAIN_SITES,
        ),
    output:
        final="results/baselines/centralized/final.json",
    log:
        "logs/centralized_select/select.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
    params:
        model_template="results/baselines/centralized/model.safetensors",
    script:
        "../scripts/select_model.py"


rule local_only_select:
    input:
        metrics=["results/sites/{site}/baselines/local_only/validation.json"],
    output:
        final="results/sites/{site}/baselines/local_only/final.json",
    log:
        "logs/local_only_select/{site}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        model_template=local_only_model,
    script:
        "../scripts/select_model.py"


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
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        models=get_models,
        evaluation=config["evaluation"],
    script:
        "../scripts/compare.py"
