# The model bundle and prediction on new patients. export_bundle (coordinator) packs the selected model with
# its preprocessing recipe, thresholds and metrics (fedglioma.predict.bundle); a site with role `predict`
# runs each of its patients through the bundle's recipe and network in its own scope (predict_subject:
# fedglioma.predict.patient.predict_site_subject, the function of `fedglioma predict subject`), and
# gathers the results in a table that stays at the site (predict_table).


rule export_bundle:
    input:
        unpack(get_export_bundle_inputs),
    output:
        bundle=BUNDLE,
    log:
        "logs/export_bundle.log",
    conda:
        "../../envs/predict.yaml"
    threads: 1
    resources:
        **COORDINATOR_SCOPE,
        mem_mb=2000,
    params:
        model=config["predict"]["model"],
        config=config,
    script:
        "../scripts/step.py"


rule predict_subject:
    input:
        get_raw_subject,
        unpack(get_template_transform),
        bundle=PREDICT_BUNDLE,
    output:
        out=directory("results/sites/{site}/predictions/sub-{subject}"),
    log:
        "logs/predict_subject/{site}/{subject}.log",
    benchmark:
        "logs/benchmarks/predict_subject/{site}/{subject}.tsv"
    wildcard_constraints:
        site=PREDICT_SITE_PATTERN,
    conda:
        "../../envs/predict.yaml"
    threads: 1
    resources:
        **SITE_SCOPE,
        mem_mb=4000,
    params:
        row=get_site_row,
        layouts_cfg=config["layouts"],
        keep_intermediates=config["predict"]["keep_intermediates"],
    script:
        "../scripts/step.py"


rule predict_table:
    input:
        predictions=get_site_predictions,
    output:
        table="results/sites/{site}/predictions/predictions.tsv",
    log:
        "logs/predict_table/{site}.log",
    wildcard_constraints:
        site=PREDICT_SITE_PATTERN,
    localrule: True
    conda:
        "../../envs/predict.yaml"
    resources:
        **SITE_SCOPE,
    script:
        "../scripts/step.py"
