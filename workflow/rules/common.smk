# Helpers of the workflow: config validation, the site/subject sheet, input functions.
# The only .smk file with Python; rule files hold rules only.

import logging

from fedglioma.config import layout_options as site_layout_options, load_sites
from fedglioma.federated.attacks import check_attack_site
from fedglioma.predict.bundle import bundle_path
from fedglioma.preprocess.chain import subject_outputs, template_transform_dir
from fedglioma.io.layouts import discover
from fedglioma.settings import validate_config
from fedglioma.smk import mark_killed_outputs
from fedglioma.synth import default_site_specs, demo_site_row, site_subject_ids

# ---- configuration, validated first (fedglioma.settings: unknown keys fail, every default filled in) ----
_config = validate_config(config, files=workflow.configfiles)
config.update(_config.model_dump(mode="json"))

# ---- resuming after a hard kill (docs/hpc.md, "Resuming after a crash") ----
# A job killed before any output of its own existed is invisible to --rerun-incomplete: a placeholder at each of
# its outputs makes them incomplete like any other (fedglioma.smk.mark_killed_outputs). Only in the main
# process: a job's own snakemake (cluster jobs) parses this file too, while other jobs are running.
_killed = mark_killed_outputs() if workflow.is_main_process else []
if _killed:
    logging.getLogger("fedglioma").warning(
        "outputs of jobs of a killed run, never written: %s (run with --rerun-incomplete to remake them)",
        ", ".join(_killed),
    )

# sites.tsv against schemas/sites.schema.yaml: every problem of every row at once (fedglioma.config.load_sites)
SITE_ROWS = {row.site: row for row in load_sites(config["sites"])}

SITES = list(SITE_ROWS)
TRAIN_SITES = [s for s, r in SITE_ROWS.items() if r.role == "train"]
EXTERNAL_SITE = next((s for s, r in SITE_ROWS.items() if r.is_external), None)
#: Sites whose patients are predicted with a model bundle (no labels, no training).
PREDICT_SITES = [s for s, r in SITE_ROWS.items() if r.role == "predict"]
#: Sites of the study itself (training and external): generated in the demo, labelled, in the report.
STUDY_SITES = [s for s in SITES if s not in PREDICT_SITES]
DEMO = config["demo"]["enabled"]
ROUNDS = int(config["federated"]["rounds"])
check_attack_site(_config.attack, TRAIN_SITES)
#: The bundle this workflow exports (rule export_bundle), and the one its predict sites use.
BUNDLE = str(bundle_path("results", config["predict"]["name"]))
PREDICT_BUNDLE = config["predict"]["bundle"] or BUNDLE
if PREDICT_SITES and not TRAIN_SITES and not config["predict"]["bundle"]:
    raise WorkflowError(
        f"{config['sites']} has only predict sites: set predict.bundle to the model bundle to use"
    )
#: Wildcard pattern of the predict sites (one that matches nothing when there are none).
PREDICT_SITE_PATTERN = "|".join(PREDICT_SITES) or "(?!)"


def _demo_subjects():
    """Subject IDs of the generated demo sites (known before the files exist).

    Site i of sites.tsv is site i of the generator's default sites (fedglioma.synth.default_site_specs):
    its row must declare what the generator writes for it (layout, path, clinical table, labels, state).
    """
    out = {}
    specs = default_site_specs(len(STUDY_SITES), config["demo"]["seed"])
    for i, site in enumerate(STUDY_SITES):
        row, spec = SITE_ROWS[site], specs[i]
        want = demo_site_row(spec, site, config["demo"]["out"])
        have = {
            "role": row.role,
            "layout": row.layout,
            "path": row.path,
            "clinical": row.clinical,
            "tumour_labels": ",".join(str(v) for v in row.tumour_labels),
            "skull_stripped": "yes" if row.skull_stripped else "no",
            "coregistered": "yes" if row.coregistered else "no",
            "space": row.space,
        }
        want = {"role": spec.role, **want}
        wrong = [
            f"{k} {have[k]!r} (expected {v!r})" for k, v in want.items() if have[k] != v
        ]
        if wrong:
            raise WorkflowError(
                f"demo.enabled: row {i + 1} ({site}) of {config['sites']} does not describe generated site "
                f"{i + 1} of {len(STUDY_SITES)}: " + "; ".join(wrong)
            )
        n = config["demo"][
            "external_subjects" if row.is_external else "subjects_per_site"
        ]
        out[site] = {sid: None for sid in site_subject_ids(spec, i, n)}
    return out


def _real_subjects(sites):
    """Subjects of ``sites`` found on disk, with their files; problems stop the workflow or are skipped."""
    out, problems = {}, []
    for site in sites:
        row = SITE_ROWS[site]
        found = discover(
            row.path, row.layout, site, **site_layout_options(row, config["layouts"])
        )
        problems.extend(found.problems)
        out[site] = {s.subject: s for s in found.subjects}
    if problems:
        text = "\n".join(f"  - {p}" for p in problems)
        if config["inputs"]["on_problem"] == "error":
            raise WorkflowError(
                f"{len(problems)} input problem(s) (run `fedglioma cohort check-inputs` for details):\n{text}"
            )
        logging.getLogger("fedglioma").warning(
            "skipping subjects with input problems:\n%s", text
        )
    return out


# predict sites hold real patients (never generated): their files are on disk before the run
SUBJECTS = (
    {**_demo_subjects(), **_real_subjects(PREDICT_SITES)}
    if DEMO
    else _real_subjects(SITES)
)
for _site, _subs in SUBJECTS.items():
    if not _subs:
        raise WorkflowError(
            f"site {_site}: no usable subjects in {SITE_ROWS[_site].path}"
        )


wildcard_constraints:
    site="|".join(SITES),
    subject="[A-Za-z0-9_-]+",
    round="[0-9]+",
    source="[A-Za-z0-9]+",
    target="[A-Za-z0-9]+",


#: Outputs of one subject's preprocessing (rule preprocess_subject), as wildcard patterns.
PREP = subject_outputs("results", "{site}", "{subject}").paths()


# ---- input functions ------------------------------------------------------------------------
def get_site_row(wildcards):
    return SITE_ROWS[wildcards.site]


def get_declared(wildcards):
    """What the site declares was already done to its images (skull stripping, co-registration, space)."""
    return SITE_ROWS[wildcards.site].declared


def get_template_transform(wildcards):
    """The template-to-template transform a site in another template space needs (none otherwise)."""
    folder = template_transform_dir(
        "results",
        SITE_ROWS[wildcards.site].space,
        config["preprocess"]["atlas"]["template"],
    )
    return {} if folder is None else {"template_transform": str(folder)}


def get_subjects(site):
    return list(SUBJECTS[site])


def get_site_source(wildcards):
    """What the site's raw data depend on: the generated demo folder, or nothing (the real files)."""
    return [f"{config['demo']['out']}/{wildcards.site}"] if DEMO else []


def demo_template_transforms(wildcards):
    """Rule synth_site: the template-to-template transform a generated SRI24 site is rendered with
    (the synthetic heads are built in MNI152 space)."""
    if SITE_ROWS[wildcards.site].space == "SRI24":
        return ["results/templates/SRI24_to_MNI152"]
    return []


def get_raw_subject(wildcards):
    """What one subject's preprocessing depends on (the step finds the files itself, in the site's layout): its
    raw files, or the generated demo site folder."""
    if DEMO and wildcards.site not in PREDICT_SITES:
        return get_site_source(wildcards)
    s = SUBJECTS[wildcards.site][wildcards.subject]
    return [*s.images.values(), *([s.seg] if s.seg is not None else [])]


def get_clinical(wildcards):
    """What a site's labels depend on: its clinical table (or the generated demo site folder)."""
    if DEMO:
        return get_site_source(wildcards)
    row = SITE_ROWS[wildcards.site]
    return [row.clinical] if row.clinical else []


def site_index(wildcards):
    return STUDY_SITES.index(wildcards.site)


def demo_n_subjects(wildcards):
    return config["demo"][
        (
            "external_subjects"
            if SITE_ROWS[wildcards.site].is_external
            else "subjects_per_site"
        )
    ]


def get_site_training_files(wildcards):
    return expand(
        PREP["npz"],
        site=wildcards.site,
        subject=get_subjects(wildcards.site),
    )


def training_set_manifest(site):
    """The site's training files after QC exclusion (rule training_set), read by every round's jobs."""
    return f"results/sites/{site}/prep/training_set.tsv"


def get_final_targets():
    """The report and the bundle of a study; each predict site's table of predictions."""
    study = ["results/report/index.html", *bundle_targets()] if TRAIN_SITES else []
    return study + [
        f"results/sites/{s}/predictions/predictions.tsv" for s in PREDICT_SITES
    ]


def bundle_model_problem():
    """Why the model predict.model names cannot be exported (None: it can): it must be evaluated."""
    model = config["predict"]["model"]
    if model in get_models():
        return None
    return (
        f"predict.model {model!r} is not among the evaluated models {get_models()} (FedBN keeps site-local "
        "parameters; a baseline must be switched on under baselines)"
    )


def bundle_targets():
    """The bundle, when the model predict.model names is evaluated (FedBN's federated model is not: a warning,
    or an error when a predict site needs this workflow's bundle)."""
    why = bundle_model_problem()
    if why is None:
        return [BUNDLE]
    if PREDICT_SITES and not config["predict"]["bundle"]:
        raise WorkflowError(f"the predict sites need a bundle, but {why}")
    logging.getLogger("fedglioma").warning("no model bundle is exported: %s", why)
    return []


def get_site_qc_rows(wildcards):
    return expand(
        PREP["qc_json"],
        site=wildcards.site,
        subject=get_subjects(wildcards.site),
    )


# ---- federated rounds -------------------------------------------------------------------------
def site_round_dir(site, rnd):
    return f"results/sites/{site}/federated/round-{rnd}"


def get_local_train_inputs(wildcards):
    """Global model of the previous round + this site's files only (+ its own site-local state)."""
    rnd = int(wildcards.round)
    inputs = {
        "global_model": f"results/federated/round-{rnd - 1}/global.safetensors",
        "labels": f"results/sites/{wildcards.site}/labels.tsv",
        "training_set": training_set_manifest(wildcards.site),
    }
    if rnd > 1:
        inputs["local_state"] = (
            f"{site_round_dir(wildcards.site, rnd - 1)}/local.safetensors"
        )
    return inputs


def get_aggregate_inputs(wildcards):
    """Only the sites' updates of this round and the server's own previous state."""
    rnd = int(wildcards.round)
    inputs = {
        "updates": [
            f"{site_round_dir(s, rnd)}/update.safetensors" for s in TRAIN_SITES
        ],
        "update_metas": [f"{site_round_dir(s, rnd)}/update.json" for s in TRAIN_SITES],
        "previous": f"results/federated/round-{rnd - 1}/global.safetensors",
    }
    if rnd > 1:
        inputs["previous_state"] = (
            f"results/federated/round-{rnd - 1}/server_state.safetensors"
        )
    return inputs


def get_validate_round_inputs(wildcards):
    rnd = int(wildcards.round)
    return {
        "global_model": f"results/federated/round-{rnd}/global.safetensors",
        "local_state": f"{site_round_dir(wildcards.site, rnd)}/local.safetensors",
        "labels": f"results/sites/{wildcards.site}/labels.tsv",
        "training_set": training_set_manifest(wildcards.site),
    }


def get_all_validation(wildcards):
    return [
        f"{site_round_dir(s, r)}/validation.json"
        for r in range(1, ROUNDS + 1)
        for s in TRAIN_SITES
    ]


def get_all_sidecars(wildcards):
    return [
        f"{site_round_dir(s, r)}/update.json"
        for r in range(1, ROUNDS + 1)
        for s in TRAIN_SITES
    ]


def get_all_round_sidecars(wildcards):
    """The global models' sidecars of rounds 1..R: who took part in each round, and why anyone did not."""
    return [f"results/federated/round-{r}/global.json" for r in range(1, ROUNDS + 1)]


def get_all_globals(wildcards):
    return [
        f"results/federated/round-{r}/global.safetensors" for r in range(0, ROUNDS + 1)
    ]


# ---- evaluation and report ------------------------------------------------------------------
def get_models(wildcards=None):
    """Models evaluated on the external site: federated (unless it keeps site-local parameters, FedBN: then
    no validated model exists for a site that never trained, and the report says so), plus the baselines
    switched on."""
    models = [] if config["federated"]["site_local_patterns"] else ["federated"]
    if config["baselines"]["centralized"]:
        models.append("centralized")
    if config["baselines"]["local_only"]:
        models += [f"local-{s}" for s in TRAIN_SITES]
    return models


def model_files(model):
    if model == "federated":
        return {
            "final": "results/federated/final.json",
            "candidates": get_all_globals(None),
        }
    if model == "centralized":
        return {
            "final": "results/baselines/centralized/final.json",
            "candidates": baseline_round_files("centralized", "model.safetensors"),
        }
    site = model.removeprefix("local-")
    return {
        "final": f"results/sites/{site}/baselines/local_only/final.json",
        "candidates": [
            f.format(site=site)
            for f in baseline_round_files("local_only", "model.safetensors")
        ],
    }


def get_evaluation_subjects(wildcards):
    return get_subjects(wildcards.site)


def get_evaluate_inputs(wildcards):
    subjects = get_subjects(wildcards.site)
    each = dict(site=wildcards.site, subject=subjects)
    return {
        **model_files(wildcards.model),
        "files": expand(PREP["npz"], **each),
        "grids": expand(PREP["grid"], **each),
        "steps": expand(PREP["final"], **each),
        "labels": f"results/sites/{wildcards.site}/labels.tsv",
    }


def get_report_inputs(wildcards):
    ev = f"results/sites/{EXTERNAL_SITE}/evaluation"
    return {
        "metrics": [f"{ev}/{m}/metrics.json" for m in get_models()],
        "figures": [f"{ev}/{m}/figures" for m in get_models()],
        "cohort": [f"results/sites/{s}/summary.json" for s in STUDY_SITES],
        "qc": [f"results/sites/{s}/qc/qc_summary.json" for s in STUDY_SITES],
        "qc_examples": [f"results/sites/{s}/qc/site_example.png" for s in STUDY_SITES],
        "curves": "results/federated/training_curves.png",
        "curves_table": "results/federated/training_curves.tsv",
        **(
            {"comparison": f"results/sites/{EXTERNAL_SITE}/evaluation/comparison.tsv"}
            if len(get_models()) > 1
            else {}
        ),
        "demo_examples": (
            [f"results/sites/{s}/demo_example.png" for s in STUDY_SITES] if DEMO else []
        ),
    }


# ---- cluster scope: each site's jobs run under that site's partition and account -----------
def site_partition(wildcards):
    return SITE_ROWS[wildcards.site].slurm_partition or config["cluster"]["partition"]


def site_account(wildcards):
    return SITE_ROWS[wildcards.site].slurm_account or config["cluster"]["account"]


def coordinator_partition(wildcards):
    return config["cluster"]["coordinator_partition"] or config["cluster"]["partition"]


def coordinator_account(wildcards):
    return config["cluster"]["coordinator_account"] or config["cluster"]["account"]


#: The SLURM partition and account of a job, set once: every rule's `resources:` starts with one of these.
SITE_SCOPE = {"slurm_partition": site_partition, "slurm_account": site_account}
COORDINATOR_SCOPE = {
    "slurm_partition": coordinator_partition,
    "slurm_account": coordinator_account,
}


def global_model_template(wildcards):
    """Path template of the global model of a round (a function: params strings are formatted)."""
    return "results/federated/round-{round}/global.safetensors"


# ---- baselines ------------------------------------------------------------------------------
def _baseline_inputs(sites):
    """Round-0 initialisation plus each site's training-set manifest and labels, in the order of ``sites``."""
    return {
        "init": "results/federated/round-0/global.safetensors",
        "training_sets": [training_set_manifest(s) for s in sites],
        "labels": [f"results/sites/{s}/labels.tsv" for s in sites],
    }


def get_centralized_inputs(wildcards):
    """The pooled training sites (the centralized baseline pools data by design)."""
    return _baseline_inputs(TRAIN_SITES)


def get_local_only_inputs(wildcards):
    return _baseline_inputs([wildcards.site])


def get_site_list(wildcards):
    return [wildcards.site]


def baseline_round_files(baseline, name):
    """One file per round of a baseline: ``results/.../{baseline}/round-{r}/{name}`` (local-only in the site's
    folder, ``{site}`` left as a wildcard)."""
    root = (
        "results/baselines/centralized"
        if baseline == "centralized"
        else "results/sites/{{site}}/baselines/local_only"
    )
    return expand(f"{root}/round-{{r}}/{name}", r=range(1, ROUNDS + 1))


def centralized_validation_files():
    """The centralized baseline's validation JSON per round and training site (round-major, sites in order)."""
    return [
        f"results/baselines/centralized/round-{r}/validation-{s}.json"
        for r in range(1, ROUNDS + 1)
        for s in TRAIN_SITES
    ]


def baseline_model_template(baseline):
    """Path template (``{round}``) of a baseline's checkpoint, for select_model (a function of wildcards)."""

    def template(wildcards):
        if baseline == "centralized":
            return "results/baselines/centralized/round-{round}/model.safetensors"
        site = wildcards.site
        return f"results/sites/{site}/baselines/local_only/round-{{round}}/model.safetensors"

    return template


def get_compare_inputs(wildcards):
    ev = f"results/sites/{wildcards.site}/evaluation"
    return {
        "metrics": [f"{ev}/{m}/metrics.json" for m in get_models()],
        "predictions": [f"{ev}/{m}/predictions.tsv" for m in get_models()],
        "labels": f"results/sites/{wildcards.site}/labels.tsv",
    }


# ---- model bundle and predict sites --------------------------------------------------------------
def get_export_bundle_inputs(wildcards):
    """The exported model's selection and round files, its external metrics, the training sites' summaries."""
    why = bundle_model_problem()
    if why is not None:
        raise WorkflowError(why)
    model = config["predict"]["model"]
    return {
        **model_files(model),
        "metrics": f"results/sites/{EXTERNAL_SITE}/evaluation/{model}/metrics.json",
        "summaries": [f"results/sites/{s}/summary.json" for s in TRAIN_SITES],
    }


def get_site_predictions(wildcards):
    return expand(
        "results/sites/{site}/predictions/sub-{subject}",
        site=wildcards.site,
        subject=get_subjects(wildcards.site),
    )
