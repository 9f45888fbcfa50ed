# Federated training, unrolled in the DAG: round 0 is a seeded initialisation; in each round
# every training site trains locally from the previous global model (site scope), and the
# server aggregates only the sites' parameter updates.


rule init_model:
    output:
        model="results/federated/round-0/global.safetensors",
        meta="results/federated/round-0/global.json",
    log:
        "logs/init_model/init.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
    params:
        model=config["model"],
        seed=config["train"]["seed"],
    script:
        "../scripts/init_model.py"


rule training_set:
    input:
        files=get_site_training_files,
        qc="results/sites/{site}/qc/site_qc.tsv",
    output:
        manifest="results/sites/{site}/prep/training_set.tsv",
    log:
        "logs/training_set/{site}.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        qc=config["qc"],
    script:
        "../scripts/training_set.py"


rule local_train:
    input:
        unpack(get_local_train_inputs),
    output:
        params_update="results/sites/{site}/federated/round-{round}/update.safetensors",
        params_sidecar="results/sites/{site}/federated/round-{round}/update.json",
        local="results/sites/{site}/federated/round-{round}/local.safetensors",
        local_meta="results/sites/{site}/federated/round-{round}/local.json",
    log:
        "logs/local_train/{site}/round-{round}.log",
    benchmark:
        "logs/benchmarks/local_train/{site}/round-{round}.tsv"
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
        federated=config["federated"],
        endpoints=config["endpoints"],
    script:
        "../scripts/local_train.py"


rule aggregate:
    input:
        unpack(get_aggregate_inputs),
    output:
        model="results/federated/round-{round}/global.safetensors",
        meta="results/federated/round-{round}/global.json",
        state="results/federated/round-{round}/server_state.safetensors",
        state_meta="results/federated/round-{round}/server_state.json",
    log:
        "logs/aggregate/round-{round}.log",
    benchmark:
        "logs/benchmarks/aggregate/round-{round}.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
        mem_mb=2000,
    params:
        federated=config["federated"],
    script:
        "../scripts/aggregate.py"


rule validate:
    input:
        unpack(get_validate_inputs),
    output:
        metrics="results/sites/{site}/federated/round-{round}/validation.json",
    log:
        "logs/validate/{site}/round-{round}.log",
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
        endpoints=config["endpoints"],
    script:
        "../scripts/validate.py"


rule select_model:
    input:
        metrics=get_all_validation,
    output:
        final="results/federated/final.json",
    log:
        "logs/select_model/select.log",
    localrule: True
    conda:
        "../../envs/train.yaml"
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
    params:
        model_template=global_model_template,
    script:
        "../scripts/select_model.py"


rule training_curves:
    input:
        sidecars=get_all_sidecars,
        metrics=get_all_validation,
    output:
        table="results/federated/training_curves.tsv",
        png=report(
            "results/federated/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"figure": "training curves"},
        ),
    log:
        "logs/training_curves/curves.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
    script:
        "../scripts/training_curves.py"
