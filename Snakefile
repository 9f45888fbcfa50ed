# fedglioma: federated multi-task deep learning on preoperative glioma MRI.
# The workflow skeleton only: logic lives in workflow/rules/common.smk and the fedglioma package.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/cohort.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/federated.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        get_final_targets(),
