# Per-site, per-subject preprocessing. Every job carries {site} and writes only under
# results/sites/{site}/; each step is also a `fedglioma` subcommand, reached by the same function
# (fedglioma.preprocess.steps.run_step) with what the site declared in sites.tsv. The one job without
# a site, template_transform, registers two public templates (no site data) for sites that arrive in
# another template space than the network's.


rule import_subject:
    input:
        unpack(get_raw_subject),
    output:
        step=directory("results/sites/{site}/prep/sub-{subject}/01_import"),
    log:
        "logs/import_subject/{site}/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        row=get_site_row,
        layout_options=layout_options,
    script:
        "../scripts/import_subject.py"


rule template_transform:
    output:
        folder=directory("results/templates/{source}_to_{target}"),
    log:
        "logs/template_transform/{source}_to_{target}.log",
    benchmark:
        "logs/benchmarks/template_transform/{source}_to_{target}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        slurm_partition=coordinator_partition,
        slurm_account=coordinator_account,
        mem_mb=3000,
    script:
        "../scripts/template_transform.py"


rule coregister:
    input:
        step=rules.import_subject.output.step,
    output:
        step=directory("results/sites/{site}/prep/sub-{subject}/02_coreg"),
    log:
        "logs/coregister/{site}/{subject}.log",
    benchmark:
        "logs/benchmarks/coregister/{site}/{subject}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
        mem_mb=3000,
    params:
        cfg=config["preprocess"]["coregister"],
        declared=get_declared,
    script:
        "../scripts/preprocess_step.py"


rule skullstrip:
    input:
        step=rules.coregister.output.step,
    output:
        step=directory("results/sites/{site}/prep/sub-{subject}/03_skullstrip"),
    log:
        "logs/skullstrip/{site}/{subject}.log",
    benchmark:
        "logs/benchmarks/skullstrip/{site}/{subject}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 2
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
        mem_mb=4000,
    params:
        cfg=config["preprocess"]["skullstrip"],
        declared=get_declared,
    script:
        "../scripts/preprocess_step.py"


rule register_atlas:
    input:
        unpack(get_template_transform),
        step=rules.skullstrip.output.step,
    output:
        step=directory("results/sites/{site}/prep/sub-{subject}/04_atlas"),
    log:
        "logs/register_atlas/{site}/{subject}.log",
    benchmark:
        "logs/benchmarks/register_atlas/{site}/{subject}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
        mem_mb=3000,
    params:
        cfg=config["preprocess"]["atlas"],
        declared=get_declared,
    script:
        "../scripts/preprocess_step.py"


rule n4:
    input:
        step=rules.register_atlas.output.step,
    output:
        step=directory("results/sites/{site}/prep/sub-{subject}/05_n4"),
    log:
        "logs/n4/{site}/{subject}.log",
    benchmark:
        "logs/benchmarks/n4/{site}/{subject}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
        mem_mb=2000,
    params:
        cfg=config["preprocess"]["n4"],
        declared=get_declared,
    script:
        "../scripts/preprocess_step.py"


rule normalise:
    input:
        step=rules.n4.output.step,
    output:
        step=directory("results/sites/{site}/prep/sub-{subject}/06_normalise"),
    log:
        "logs/normalise/{site}/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        cfg=config["preprocess"]["normalise"],
        declared=get_declared,
    script:
        "../scripts/preprocess_step.py"


rule training_file:
    input:
        step=rules.normalise.output.step,
    output:
        npz="results/sites/{site}/prep/sub-{subject}_train.npz",
        grid="results/sites/{site}/prep/sub-{subject}_grid.json",
    log:
        "logs/training_file/{site}/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        grid=config["preprocess"]["grid"],
    script:
        "../scripts/training_file.py"


rule qc_subject:
    input:
        step=rules.normalise.output.step,
    output:
        png=report(
            "results/sites/{site}/qc/sub-{subject}_qc.png",
            caption="../report/qc.rst",
            category="Quality control",
            subcategory="{site}",
            labels={"site": "{site}", "subject": "{subject}"},
        ),
        row="results/sites/{site}/qc/sub-{subject}_qc.json",
    log:
        "logs/qc_subject/{site}/{subject}.log",
    conda:
        "../../envs/preprocess.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        cfg=config["qc"],
    script:
        "../scripts/qc_subject.py"


rule qc_site:
    input:
        rows=get_site_qc_rows,
    output:
        table=report(
            "results/sites/{site}/qc/site_qc.tsv",
            caption="../report/qc_site.rst",
            category="Quality control",
            subcategory="{site}",
            labels={"site": "{site}", "table": "QC"},
        ),
        summary="results/sites/{site}/qc/qc_summary.json",
        example="results/sites/{site}/qc/site_example.png",
    log:
        "logs/qc_site/{site}.log",
    localrule: True
    conda:
        "../../envs/preprocess.yaml"
    resources:
        slurm_partition=site_partition,
        slurm_account=site_account,
    params:
        cfg=config["qc"],
    script:
        "../scripts/qc_site.py"
