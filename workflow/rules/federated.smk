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
        **COORDINATOR_SCOPE,
    params:
        model_cfg=config["model"],
        train_cfg=config["train"],
    script:
        "../scripts/step.py"


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
        **SITE_SCOPE,
    params:
        qc_cfg=config["qc"],
    script:
        "../scripts/step.py"


rule local_train:
    input:
        unpack(get_local_train_inputs),
    output:
        site_update="results/sites/{site}/federated/round-{round}/update.safetensors",
        site_update_meta="results/sites/{site}/federated/round-{round}/update.json",
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
        **SITE_SCOPE,
        mem_mb=6000,
    params:
        model_cfg=config["model"],
        train_cfg=config["train"],
        federated_cfg=config["federated"],
        endpoints_cfg=config["endpoints"],
        attack_cfg=config["attack"],
    script:
        "../scripts/step.py"


rule aggregate:
    input:
        unpack(get_aggregate_inputs),
    output:
        model="results/federated/round-{round}/global.safetensors",
        meta="results/federated/round-{round}/global.json",
        server_state="results/federated/round-{round}/server_state.safetensors",
        server_state_meta="results/federated/round-{round}/server_state.json",
    log:
        "logs/aggregate/round-{round}.log",
    benchmark:
        "logs/benchmarks/aggregate/round-{round}.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        **COORDINATOR_SCOPE,
        mem_mb=2000,
    params:
        federated_cfg=config["federated"],
        sites=TRAIN_SITES,
    script:
        "../scripts/step.py"


rule validate_round:
    input:
        unpack(get_validate_round_inputs),
    output:
        validation="results/sites/{site}/federated/round-{round}/validation.json",
    log:
        "logs/validate_round/{site}/round-{round}.log",
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        **SITE_SCOPE,
    params:
        model_cfg=config["model"],
        train_cfg=config["train"],
        federated_cfg=config["federated"],
        endpoints_cfg=config["endpoints"],
    script:
        "../scripts/step.py"


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
        **COORDINATOR_SCOPE,
    params:
        model_template=global_model_template,
    script:
        "../scripts/step.py"


rule training_curves:
    input:
        sidecars=get_all_sidecars,
        metrics=get_all_validation,
        rounds=get_all_round_sidecars,
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
        **COORDINATOR_SCOPE,
    script:
        "../scripts/step.py"
