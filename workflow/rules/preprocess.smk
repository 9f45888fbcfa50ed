# Per-site, per-subject preprocessing. Every job carries {site} and writes only under
# results/sites/{site}/. One job per subject runs the whole chain (import, co-registration, skull
# stripping, atlas registration, N4, normalisation, training file, QC) through
# fedglioma.preprocess.chain.preprocess_subject, the function of `fedglioma preprocess subject`; its step
# folders are checkpoints that a rerun keeps while their parameters are unchanged. The one job without a
# site, template_transform, registers two public templates (no site data) for sites that arrive in
# another template space than the network's.


rule template_transform:
    output:
        out_dir=directory("results/templates/{source}_to_{target}"),
    log:
        "logs/template_transform/{source}_to_{target}.log",
    benchmark:
        "logs/benchmarks/template_transform/{source}_to_{target}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        **COORDINATOR_SCOPE,
        mem_mb=3000,
    script:
        "../scripts/step.py"


rule preprocess_subject:
    input:
        get_raw_subject,
        unpack(get_template_transform),
    output:
        final=directory(PREP["final"]),
        npz=PREP["npz"],
        grid=PREP["grid"],
        qc_png=report(
            PREP["qc_png"],
            caption="../report/qc.rst",
            category="Quality control",
            subcategory="{site}",
            labels={"site": "{site}", "subject": "{subject}"},
        ),
        qc_json=PREP["qc_json"],
    log:
        "logs/preprocess_subject/{site}/{subject}.log",
    benchmark:
        "logs/benchmarks/preprocess_subject/{site}/{subject}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    threads: 1
    resources:
        **SITE_SCOPE,
        mem_mb=4000,
    params:
        row=get_site_row,
        preprocess_cfg=config["preprocess"],
        qc_cfg=config["qc"],
        layouts_cfg=config["layouts"],
        inputs_cfg=config["inputs"],
    script:
        "../scripts/step.py"


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
        **SITE_SCOPE,
    params:
        qc_cfg=config["qc"],
    script:
        "../scripts/step.py"
