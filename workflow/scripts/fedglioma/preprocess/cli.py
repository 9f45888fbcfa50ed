"""Subcommands of the preprocessing steps; :func:`register` adds them to ``fedglioma``'s parser.

Step parameters come as ``--params JSON`` (a JSON object, or ``@file.json``), the
``preprocess.<step>`` section of the config. Every command returns 0 on success;
:class:`~fedglioma.errors.FedgliomaError` propagates to ``fedglioma.cli``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from fedglioma.declared import Declared
from fedglioma.errors import ConfigError


def _params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--params is not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ConfigError("--params must be a JSON object")
    return obj


def _add_ids(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--site", required=required, help="site ID")
    p.add_argument("--subject", required=required, help="subject ID")


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


def _add_step(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("in_dir", type=Path, help="previous step folder")
    p.add_argument("out_dir", type=Path, help="step folder to write (atomically)")
    _add_ids(p)
    p.add_argument("--params", default=None, help="step parameters as a JSON object or @file.json "
                   "(the step's section of config.yaml)")
    _add_declared(p)
    return p


def _step_handler(step: str) -> Any:
    """Handler of a step subcommand: :func:`~fedglioma.preprocess.steps.run_step`, as the rule calls it."""

    def handler(a: argparse.Namespace) -> int:
        from fedglioma.preprocess.steps import run_step

        run_step(step, a.in_dir, a.out_dir, site=a.site, subject=a.subject, params=_params(a.params),
                 declared=_declared(a), template_transform=getattr(a, "template_transform", None))
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
                   site=a.site, subject=a.subject, non_tumour_labels=other, declared=_declared(a), **_params(a.params))
    return 0


def _cmd_skullstrip(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.skullstrip import skullstrip_file
    from fedglioma.preprocess.steps import run_step

    params = _params(a.params)
    for key in ("mode", "method", "device", "precision"):
        if getattr(a, key) is not None:
            params[key] = getattr(a, key)
    if a.tta:
        params["tta"] = True
    if Path(a.input).is_dir():
        if not (a.site and a.subject):
            raise ConfigError("skullstrip on a step folder needs --site and --subject")
        run_step("skullstrip", a.input, a.output, site=a.site, subject=a.subject, params=params,
                 declared=_declared(a))
    else:
        skullstrip_file(Path(a.input), Path(a.output), out_brain=a.brain, **params)
    return 0


def _cmd_template_transform(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.templates import template_transform

    template_transform(a.source, a.target, a.out_dir)
    return 0


def _cmd_training_file(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.grid import training_file

    p = _params(a.params)
    if a.grid_spacing is not None:
        p["grid_spacing"] = a.grid_spacing
    if a.grid_shape is not None:
        p["grid_shape"] = a.grid_shape
    training_file(a.in_dir, a.out_npz, site=a.site, subject=a.subject, grid_json=a.grid_json, **p)
    return 0


def _cmd_qc(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.qc import qc

    qc(a.subject_dir, a.out_png, a.out_json, thresholds=_params(a.thresholds), site=a.site, subject=a.subject)
    return 0


def _cmd_qc_site(a: argparse.Namespace) -> int:
    from fedglioma.preprocess.qc import qc_site

    qc_site(list(a.rows), a.out_tsv)
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
    """Add the preprocessing subcommands to ``subparsers``; each sets ``func`` (args -> exit code)."""
    p = subparsers.add_parser("preprocess-import", help="import one subject (checks, tumour mask, RAS)")
    p.add_argument("out_dir", type=Path)
    _add_ids(p)
    for m in ("t1", "t1c", "t2", "flair"):
        p.add_argument(f"--{m}", type=Path, required=True, help=f"{m.upper()} NIfTI")
    p.add_argument("--seg", type=Path, default=None, help="label map on the T1c grid")
    p.add_argument("--tumour-labels", default="", help="comma-separated whole-tumour label values, e.g. 1,2,4")
    p.add_argument("--non-tumour-labels", default="", help="label values that are not tumour, e.g. 4 (resection "
                   "cavity of BraTS 2024 masks)")
    p.add_argument("--params", default=None, help="JSON object or @file.json")
    _add_declared(p)
    p.set_defaults(func=_cmd_import)

    _add_step(subparsers, "coregister", "rigidly register T1, T2, FLAIR onto the T1c").set_defaults(
        func=_step_handler("coregister"))

    p = subparsers.add_parser(
        "skullstrip",
        help="brain mask: on a step folder (IN OUT_DIR --site --subject) or a NIfTI file (IN OUT_MASK [--brain])",
    )
    p.add_argument("input", help="step folder or NIfTI file")
    p.add_argument("output", help="step folder or mask NIfTI")
    p.add_argument("--brain", type=Path, default=None, help="file mode: also write the brain-extracted image")
    p.add_argument("--mode", choices=("fast", "accurate"), default=None, help="HD-BET: 1 fold (fast) or 5 folds")
    p.add_argument("--tta", action="store_true", help="HD-BET test-time mirroring")
    p.add_argument("--method", choices=("hdbet", "atlas"), default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, or a CUDA index")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="HD-BET network precision: auto (default; bf16 where the processor runs it natively)")
    _add_ids(p, required=False)
    p.add_argument("--params", default=None, help="JSON object or @file.json")
    _add_declared(p)
    p.set_defaults(func=_cmd_skullstrip)

    p = _add_step(subparsers, "register-atlas", "bring the subject into template space (registration, or what "
                  "the site's declared space allows)")
    p.add_argument("--template-transform", type=Path, default=None,
                   help="folder of `fedglioma template-transform SPACE TEMPLATE` for a site in another template space")
    p.set_defaults(func=_step_handler("register_atlas"))

    _add_step(subparsers, "n4", "N4 bias-field correction inside the brain mask").set_defaults(
        func=_step_handler("n4"))
    _add_step(subparsers, "normalise", "intensity normalisation inside the brain mask").set_defaults(
        func=_step_handler("normalise"))

    p = subparsers.add_parser("template-transform", help="register one template onto another once (affine), for "
                              "sites that arrive in another template space")
    p.add_argument("source", help="the sites' space, e.g. SRI24")
    p.add_argument("target", help="the network's template (preprocess.atlas.template), e.g. MNI152")
    p.add_argument("out_dir", type=Path)
    p.set_defaults(func=_cmd_template_transform)

    p = subparsers.add_parser("training-file", help="write the network-grid training file and grid JSON")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_npz", type=Path)
    _add_ids(p)
    p.add_argument("--grid-spacing", type=float, nargs="+", default=None)
    p.add_argument("--grid-shape", type=int, nargs="+", default=None)
    p.add_argument("--grid-json", type=Path, default=None, help="default: sub-{subject}_grid.json next to the npz")
    p.add_argument("--params", default=None, help="JSON object or @file.json")
    p.set_defaults(func=_cmd_training_file)

    p = subparsers.add_parser("qc", help="QC figure and row of one subject")
    p.add_argument("subject_dir", type=Path)
    p.add_argument("out_png", type=Path)
    p.add_argument("out_json", type=Path)
    p.add_argument("--thresholds", default=None, help="JSON object or @file.json")
    _add_ids(p, required=False)
    p.set_defaults(func=_cmd_qc)

    p = subparsers.add_parser("qc-site", help="gather a site's QC rows into a TSV")
    p.add_argument("out_tsv", type=Path)
    p.add_argument("rows", type=Path, nargs="+")
    p.set_defaults(func=_cmd_qc_site)

    p = subparsers.add_parser("to-native", help="map a network-grid array back to the original T1c grid")
    p.add_argument("array", type=Path, help=".npy, .npz or NIfTI holding the grid array")
    p.add_argument("subject_dir", type=Path)
    p.add_argument("grid_json", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--key", default=None, help="array name in an .npz")
    p.add_argument("--channel", type=int, default=None, help="take this index of the first axis")
    p.add_argument("--label", action="store_true", help="label map (genericLabel interpolation, integer output)")
    p.set_defaults(func=_cmd_to_native)
