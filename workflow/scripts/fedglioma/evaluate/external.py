"""External evaluation of a model on a site that never trained, inside that site's scope.

Rule ``evaluate`` and ``fedglioma evaluate model`` call :func:`evaluate_model`: inference on the site's
training files, the predicted masks mapped back onto each subject's native T1c grid, per-subject predictions and
segmentation rows (they stay at the site) and site-aggregated metrics and figures (they leave it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from fedglioma.atomic import atomic_dir, atomic_path, write_json
from fedglioma.errors import InputError
from fedglioma.faults import fault_point
from fedglioma.io.files import read_json

log = logging.getLogger(__name__)


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


def _predict_subjects(model: Any, files: Sequence[str], subjects: Sequence[str], *,
                      site: str) -> Iterator[tuple[str, dict[str, np.ndarray], np.ndarray, dict[str, Any]]]:
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
    from fedglioma.evaluate.site import GRID_COLUMNS
    from fedglioma.metrics import segmentation_metrics
    from fedglioma.preprocess.grid import native_mask, native_reference_mask

    mask = native_mask(seg_prob, subject_dir, grid)
    pred = np.asarray(mask.dataobj) > 0
    if native_out is not None:
        with atomic_path(native_out) as tmp:
            nib.save(mask, str(tmp))
    truth = native_reference_mask(subject_dir, site=site, subject=subject)
    if truth is None or truth_grid is None:
        return None
    if truth.shape != pred.shape:
        raise InputError(f"reference mask {truth.shape} and native prediction {pred.shape} differ in shape",
                         site=site, subject=subject, file=subject_dir, fix="rerun the preprocessing of the subject")
    spacing = tuple(float(v) for v in mask.header.get_zooms()[:3])
    row = {"subject": subject, **segmentation_metrics(pred, truth, spacing)}
    grid_spacing = tuple(float(v) for v in read_json(grid, what="network-grid description")["grid_spacing"])
    on_grid = segmentation_metrics(seg_prob >= 0.5, truth_grid, grid_spacing)
    row.update({col: on_grid[col.removesuffix("_grid")] for col in GRID_COLUMNS})
    return row


def evaluate_model(final: str, candidates: Sequence[str], files: Sequence[str], grids: Sequence[str],
                   steps: Sequence[str], labels: str, predictions: str, segmentation: str, masks: str, metrics: str,
                   figures: str, *, subjects: Sequence[str], site: str, model: str, model_cfg: Mapping[str, Any],
                   evaluation_cfg: Mapping[str, Any], endpoints_cfg: Mapping[str, Any]) -> None:
    """Rule ``evaluate`` / ``fedglioma evaluate model``: model ``model`` on the external site ``site``.

    Per-subject outputs (``predictions``, ``segmentation``, the native-space ``masks``) stay in the site's
    folder; ``metrics`` and the ``figures`` hold only site-aggregated results. Segmentation is measured on each
    subject's native T1c grid (:func:`subject_segmentation`).

    Args:
        final: the model selection (``final.json``: round, thresholds, model file) of the evaluated model.
        candidates: the model files ``final`` may select (one per round).
        files, grids, steps: per subject (in the order of ``subjects``): the training file, its grid JSON and its
            last preprocessing step folder.
        labels: the site's ``labels.tsv``.
        model_cfg, evaluation_cfg, endpoints_cfg: the config's ``model``, ``evaluation`` and ``endpoints``.
    """
    from fedglioma.evaluate.figures import overlay_figure, pick_best_median_worst, write_site_figures
    from fedglioma.evaluate.site import summarise_site
    from fedglioma.federated.exchange import sha256_file
    from fedglioma.io.clinical import read_labels
    from fedglioma.settings import Endpoints, EvaluationConfig, ModelConfig, section
    from fedglioma.train.local import load_model

    model_path, final_doc = resolve_model(final, candidates)
    net = load_model(model_path, section(ModelConfig, model_cfg, "model"))
    ev = section(EvaluationConfig, evaluation_cfg, "evaluation")
    log.info("site %s: evaluating %s (%s)", site, model, model_path)
    pred_rows, seg_rows, keep = [], [], {}
    with atomic_dir(masks) as mask_tmp:
        for (subject, arrays, seg_prob, probs), grid, step in zip(
            _predict_subjects(net, files, subjects, site=site), grids, steps, strict=True
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
    pred_table = pd.DataFrame(pred_rows)
    seg = pd.DataFrame(seg_rows) if seg_rows else None
    with atomic_path(predictions) as tmp:
        pred_table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(segmentation) as tmp:
        (seg if seg is not None else pd.DataFrame(columns=["subject", "dice", "hd95", "volume_diff_ml"])).to_csv(
            tmp, sep="\t", index=False, na_rep="")
    fault_point(f"evaluate/{site}/{model}/after-tables")  # masks and tables written, metrics and figures not
    summary = summarise_site(pred_table, read_labels(labels), seg, final_doc.get("thresholds"),
                             n_boot=ev.n_bootstrap, seed=ev.seed, site=site,
                             endpoints=section(Endpoints, endpoints_cfg, "endpoints"))
    summary["model"] = {"name": model, "round": final_doc.get("round"),
                        "sha256": sha256_file(model_path), "file": str(model_path)}
    with atomic_dir(figures) as fig_tmp:
        write_site_figures(summary, seg, fig_tmp, title=f"{model} on {site}")
        picks = pick_best_median_worst(seg) if seg is not None else {}
        if picks:
            order = [(k, picks[k]) for k in ("best", "median", "worst") if k in picks]
            overlay_figure([keep[s][0] for _, s in order], [keep[s][1] for _, s in order],
                           [keep[s][2] for _, s in order],
                           [f"{k}: Dice {float(seg.set_index('subject').loc[s, 'dice']):.2f}" for k, s in order],
                           fig_tmp / "overlays.png")
    write_json(metrics, summary)
