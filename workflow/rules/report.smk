# Reports: the standalone results/report/index.html (Snakemake's own report is made with
# `snakemake --report`, from the report() outputs of every rule).


rule report:
    input:
        unpack(get_report_inputs),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="Report",
            labels={"report": "standalone"},
        ),
        headline="results/report/metrics.json",
    log:
        "logs/report/report.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        **COORDINATOR_SCOPE,
    params:
        config=config,
        external=EXTERNAL_SITE,
        sites=STUDY_SITES,
        models=get_models,
    script:
        "../scripts/step.py"
