# Cohort: the built-in synthetic demo sites and each site's harmonised clinical labels.


rule synth_site:
    input:
        template_transforms=demo_template_transforms,
    output:
        site_dir=directory(f"{config['demo']['out']}/{{site}}"),
    log:
        "logs/synth_site/{site}.log",
    benchmark:
        "logs/benchmarks/synth_site/{site}.tsv"
    conda:
        "../../envs/preprocess.yaml"
    resources:
        **SITE_SCOPE,
    params:
        site_index=site_index,
        n_sites=len(STUDY_SITES),
        n_subjects=demo_n_subjects,
        demo_cfg=config["demo"],
    script:
        "../scripts/step.py"


rule labels:
    input:
        get_clinical,
    output:
        labels="results/sites/{site}/labels.tsv",
        summary="results/sites/{site}/summary.json",
    log:
        "logs/labels/{site}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SITE_SCOPE,
    params:
        row=get_site_row,
        clinical_cfg=config["clinical"],
        layouts_cfg=config["layouts"],
    script:
        "../scripts/step.py"


rule demo_figure:
    input:
        site_dir=f"{config['demo']['out']}/{{site}}",
    output:
        out_png=report(
            "results/sites/{site}/demo_example.png",
            caption="../report/demo_example.rst",
            category="Cohort",
            labels={"site": "{site}", "figure": "synthetic subject"},
        ),
    log:
        "logs/demo_figure/{site}.log",
    conda:
        "../../envs/report.yaml"
    resources:
        **SITE_SCOPE,
    script:
        "../scripts/step.py"
