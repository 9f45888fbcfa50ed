"""A figure of one generated subject: the four contrasts as written (each on its own grid) with the labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from fedglioma.atomic import atomic_path
from fedglioma.errors import InputError
from fedglioma.io.layouts import discover

#: Label colours by value: 1 red, 2 green, 3 and 4 yellow/blue (the layout's meaning is in the title).
LABEL_COLOURS = ListedColormap(["none", "#e4572e", "#29bf12", "#ffc914", "#2e86de"])
#: What the label values of each layout mean (figure title).
LABEL_MEANING = {
    "brats2021": "labels 1 core / 2 edema / 4 enhancing",
    "ucsf_pdgm": "labels 1 core / 2 edema / 4 enhancing",
    "upenn_gbm": "labels 1 core / 2 edema / 4 enhancing",
    "brats2023": "labels 1 core / 2 edema / 3 enh. / 4 cavity",
    "egd": "whole-tumour mask",
}


def site_layout(site_dir: str | Path) -> str:
    """The layout a generated site was written in (its ``synthetic.json``; BraTS 2021 for older folders)."""
    manifest = Path(site_dir) / "synthetic.json"
    if manifest.is_file():
        return str(json.loads(manifest.read_text())["layout"])
    return "brats2021"


def _axial(img: nib.Nifti1Image, z_mm: float) -> tuple[np.ndarray, float]:
    """The axial slice (RAS voxel order, transposed for display) nearest to world z, and its pixel aspect."""
    can = nib.as_closest_canonical(img)
    # world z of a voxel depends on i, j for oblique grids: take the slice through the grid centre's column
    centre = (np.array(can.shape[:3]) - 1) / 2.0
    ijk = np.linalg.inv(can.affine) @ np.append((can.affine @ np.append(centre, 1.0))[:2], [z_mm, 1.0])
    k = int(np.clip(round(ijk[2]), 0, can.shape[2] - 1))
    zooms = can.header.get_zooms()[:3]
    return np.asarray(can.dataobj, dtype=np.float32)[:, :, k].T, float(zooms[1] / zooms[0])


def subject_figure(site_dir: str | Path, out_png: str | Path, *, site: str, subject: str | None = None) -> Path:
    """Write the four contrasts (axial slice through the tumour centre in scanner space, each sequence on its
    own grid, shown in RAS) and the segmentation of ``subject`` (default: the first subject with one)."""
    layout = site_layout(site_dir)
    found = discover(site_dir, layout, site)
    subjects = [s for s in found.subjects if subject in (None, s.subject)]
    if not subjects:
        raise InputError("no subject to show", site=site, subject=subject, file=Path(site_dir),
                         fix="generate the site first")
    with_seg = [s for s in subjects if s.seg is not None] or subjects
    s = with_seg[0]
    raw = {m: nib.load(p) for m, p in s.images.items()}
    seg_img = nib.load(s.seg) if s.seg else None
    ref = seg_img if seg_img is not None else raw["T1c"]
    if seg_img is not None and np.asarray(seg_img.dataobj).any():
        centre = np.argwhere(np.asarray(seg_img.dataobj) > 0).mean(axis=0)
    else:
        centre = (np.array(ref.shape[:3]) - 1) / 2.0
    z_mm = float((ref.affine @ np.append(centre, 1.0))[2])
    fig = Figure(figsize=(12.5, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    for ax, (m, img) in zip(axes, raw.items(), strict=False):
        data, aspect = _axial(img, z_mm)
        ax.imshow(data, cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=np.percentile(data, 99.5) or 1.0)
        grid = "x".join(str(n) for n in img.shape[:3])
        vox = "x".join(f"{v:.2g}" for v in img.header.get_zooms()[:3])
        ax.set_title(f"{m}\n{grid} @ {vox} mm, {''.join(nib.aff2axcodes(img.affine))}", fontsize=8)
    base, aspect = _axial(raw["T1c"], z_mm)
    axes[4].imshow(base, cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=np.percentile(base, 99.5) or 1.0)
    if seg_img is not None:
        lab, aspect = _axial(seg_img, z_mm)
        axes[4].imshow(np.ma.masked_equal(lab, 0), cmap=LABEL_COLOURS, vmin=0, vmax=4, origin="lower",
                       aspect=aspect, alpha=0.6, interpolation="nearest")
    axes[4].set_title(f"T1c +\n{LABEL_MEANING.get(layout, 'labels')}" if seg_img is not None else "no segmentation",
                      fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(f"site {site} (synthetic, {layout} layout), {s.subject}", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)
