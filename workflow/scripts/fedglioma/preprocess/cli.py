"""Tools of ``fedglioma preprocess``: one preprocessing step on one folder, QC of one subject, the mapping back.

The workflow runs the whole chain of a subject in one job (``fedglioma preprocess subject``, from
:mod:`fedglioma.registry`); these commands run one step of it, through the same functions with the same
arguments: the steps on step folders through :func:`~fedglioma.preprocess.steps.run_step` with the step's
``preprocess.<section>`` of ``--config`` (``--set preprocess.n4.shrink_factor=4`` overrides one value) and what
the site declared (its ``sites.tsv`` row, or ``--skull-stripped``/``--coregistered``/``--space``).
Every command returns 0 on success; :class:`~fedglioma.errors.FedgliomaError` propagates to ``fedglioma.cli``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fedglioma.declared import Declared
from fedglioma.errors import ConfigError
from fedglioma.settings import add_config_arguments, config_of

#: Step command -> (step, its section of ``preprocess`` in the config, help).
STEP_COMMANDS: dict[str, tuple[str, str, str]] = {
    "coregister": ("coregister", "coregister", "rigidly register T1, T2, FLAIR onto the T1c"),
    "skullstrip": ("skullstrip", "skullstrip", "brain mask (HD-BET, atlas, or what the site declared)"),
    "register-atlas": ("register_atlas", "atlas", "bring the subject into template space (registration, or what "
                       "the site's declared space allows)"),
    "n4": ("n4", "n4", "N4 bias-field correction inside the brain mask"),
    "normalise": ("normalise", "normalise", "intensity normalisation inside the brain mask"),
}


def _add_ids(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", required=True, help="site ID")
    p.add_argument("--subject", required=True, help="subject ID")


def _add_declared(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what the site declares (as in sites.tsv; --sites reads the site's row instead)")
    g.add_argument("--sites", type=Path, default=None, help="sites.tsv: take the declaration from --site's row")
    g.add_argument("--skull-stripped", action="store_true", help="images are already brain-extracted")
    g.add_argument("--coregistered", action="store_true", help="sequences are already co-registered")
    g.add_argument("--space", default="native", help="native (default), MNI152 or SRI24")


def _declared(a: argparse.Namespace) -> Declared:
    """The site's declaration: its sites.tsv row with --sites, else the flags (the same values a rule gets)."""
    if a.sites is not None:
        from fedglioma.config import load_sites

        rows = {r.site: r for r in load_sites(a.sites)}
        if a.site not in rows:
            raise ConfigError(f"site {a.site!r} is not in {a.sites} (sites: {', '.join(rows)})")
        return rows[a.site].declared
    return Declared(skull_stripped=a.skull_stripped, coregistered=a.coregistered, space=a.space)


def _step_handler(step: str, section: str) -> Any:
    """Handler of a step command: :func:`~fedglioma.preprocess.steps.run_step`, as the chain of a subject calls it."""

    def handler(a: argparse.Namespace) -> int:
        from fedglioma.preprocess.steps import run_step

        run_step(step, a.in_dir, a.out_dir, site=a.site, subject=a.subject,
                 params=dict(config_of(a)["preprocess"][section]), declared=_declared(a),
                 template_transform=getattr(a, "template_transform", None))
        return 0

    return handler


# --------------------------------------------------------------------------- handlers


def _cmd_import(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.importing import import_subject

    labels = [int(v) for v in str(a.tumour_labels).split(",") if v.strip()] if a.tumour_labels else []
    if a.seg is not None and not labels:
        raise ConfigError("--seg needs --tumour-labels")
    other = [int(v) for v in str(a.non_tumour_labels).split(",") if v.strip()]
    import_subject({"T1": a.t1, "T1c": a.t1c, "T2": a.t2, "FLAIR": a.flair}, a.seg, labels, a.out_dir,
                   site=a.site, subject=a.subject, non_tumour_labels=other, declared=_declared(a))
    return 0


def _cmd_skullstrip_file(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.skullstrip import skullstrip_file

    skullstrip_file(Path(a.image), Path(a.mask), out_brain=a.brain, **config_of(a)["preprocess"]["skullstrip"])
    return 0


def _cmd_training_file(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.grid import training_file

    training_file(a.in_dir, a.out_npz, site=a.site, subject=a.subject, grid_json=a.grid_json,
                  **dict(config_of(a)["preprocess"]["grid"]))
    return 0


def _cmd_qc(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.qc import qc

    qc(a.subject_dir, a.out_png, a.out_json, thresholds=dict(config_of(a)["qc"]["thresholds"]), site=a.site,
       subject=a.subject)
    return 0


def load_grid_array(path: Path, key: str | None = None) -> np.ndarray:
    """Array from ``.npy``, ``.npz`` (``key``, default the only or first array) or NIfTI (data only)."""
    name = Path(path).name
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if name.endswith(".npz"):
        with np.load(path, allow_pickle=False) as z:
            k = key or z.files[0]
            if k not in z.files:
                raise ConfigError(f"{path} has no array {k!r} (has {z.files})")
            return z[k]
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        return np.asarray(nib.load(path).dataobj)
    raise ConfigError(f"{path}: expected .npy, .npz or NIfTI")


def _cmd_to_native(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.grid import to_native

    arr = load_grid_array(a.array, a.key)
    if a.channel is not None:
        arr = arr[a.channel]
    to_native(arr, a.subject_dir, a.grid_json, a.out, is_label=a.label)
    return 0


# --------------------------------------------------------------------------- parser


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the preprocessing tools to the ``preprocess`` stage's ``subparsers``."""
    p = subparsers.add_parser("import", help="import one subject's raw files (checks, tumour mask, RAS)")
    p.add_argument("out_dir", type=Path, help="step folder to write (01_import)")
    _add_ids(p)
    for m in ("t1", "t1c", "t2", "flair"):
        p.add_argument(f"--{m}", type=Path, required=True, help=f"{m.upper()} NIfTI")
    p.add_argument("--seg", type=Path, default=None, help="label map on the T1c grid")
    p.add_argument("--tumour-labels", default="", help="comma-separated whole-tumour label values, e.g. 1,2,4")
    p.add_argument("--non-tumour-labels", default="", help="label values that are not tumour, e.g. 4 (resection "
                   "cavity of BraTS 2024 masks)")
    _add_declared(p)
    p.set_defaults(func=_cmd_import)

    for command, (step, section, help_) in STEP_COMMANDS.items():
        p = subparsers.add_parser(command, help=f"{help_} (one step folder)",
                                  description=f"{help_}: IN (previous step folder) -> OUT_DIR, with "
                                              f"preprocess.{section} of --config.")
        p.add_argument("in_dir", type=Path, help="previous step folder")
        p.add_argument("out_dir", type=Path, help="step folder to write (atomically)")
        _add_ids(p)
        add_config_arguments(p)
        _add_declared(p)
        if step == "register_atlas":
            p.add_argument("--template-transform", type=Path, default=None,
                           help="folder of `fedglioma preprocess template-transform` for a site in another "
                                "template space")
        p.set_defaults(func=_step_handler(step, section))

    p = subparsers.add_parser("skullstrip-file", help="brain mask of one NIfTI file (preprocess.skullstrip)")
    p.add_argument("image", help="NIfTI image")
    p.add_argument("mask", help="brain mask NIfTI to write")
    p.add_argument("--brain", type=Path, default=None, help="also write the brain-extracted image")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_skullstrip_file)

    p = subparsers.add_parser("training-file", help="network-grid training file and grid JSON (preprocess.grid)")
    p.add_argument("in_dir", type=Path, help="last step folder")
    p.add_argument("out_npz", type=Path)
    _add_ids(p)
    p.add_argument("--grid-json", type=Path, default=None, help="default: sub-{subject}_grid.json next to the npz")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_training_file)

    p = subparsers.add_parser("qc", help="QC figure and row of one subject (qc.thresholds)")
    p.add_argument("subject_dir", type=Path)
    p.add_argument("out_png", type=Path)
    p.add_argument("out_json", type=Path)
    p.add_argument("--site", default=None, help="site ID")
    p.add_argument("--subject", default=None, help="subject ID")
    add_config_arguments(p)
    p.set_defaults(func=_cmd_qc)

    p = subparsers.add_parser("to-native", help="map a network-grid array back to the original T1c grid")
    p.add_argument("array", type=Path, help=".npy, .npz or NIfTI holding the grid array")
    p.add_argument("subject_dir", type=Path)
    p.add_argument("grid_json", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--key", default=None, help="array name in an .npz")
    p.add_argument("--channel", type=int, default=None, help="take this index of the first axis")
    p.add_argument("--label", action="store_true", help="label map (genericLabel interpolation, integer output)")
    p.set_defaults(func=_cmd_to_native)
