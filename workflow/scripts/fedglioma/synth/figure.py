"""A figure of one generated subject: the four contrasts in native space with the tumour labels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from fedglioma.atomic import atomic_path
from fedglioma.io.layouts import discover

#: BraTS labels: 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing tumour.
LABEL_COLOURS = ListedColormap(["none", "#e4572e", "#29bf12", "#ffc914"])


def subject_figure(site_dir: str | Path, out_png: str | Path, *, site: str, subject: str | None = None) -> Path:
    """Write the four contrasts (axial slice through the tumour centre, native orientation shown as RAS)
    and the segmentation of ``subject`` (default: the site's first subject with a segmentation)."""
    found = discover(site_dir, "brats2021", site)
    subjects = [s for s in found.subjects if subject in (None, s.subject)]
    with_seg = [s for s in subjects if s.seg is not None] or subjects
    s = with_seg[0]
    imgs = {m: nib.as_closest_canonical(nib.load(p)) for m, p in s.images.items()}
    seg = np.asarray(nib.as_closest_canonical(nib.load(s.seg)).dataobj) if s.seg else None
    z = int(np.argwhere(seg > 0)[:, 2].mean()) if seg is not None and seg.any() else imgs["T1c"].shape[2] // 2
    fig = Figure(figsize=(12.5, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 5)
    zooms = imgs["T1c"].header.get_zooms()[:3]
    aspect = zooms[1] / zooms[0]
    for ax, (m, img) in zip(axes, imgs.items(), strict=False):
        data = np.asarray(img.dataobj, dtype=np.float32)[:, :, z].T
        ax.imshow(data, cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=np.percentile(data, 99.5))
        ax.set_title(m)
    base = np.asarray(imgs["FLAIR"].dataobj, dtype=np.float32)[:, :, z].T
    axes[4].imshow(base, cmap="gray", origin="lower", aspect=aspect, vmin=0, vmax=np.percentile(base, 99.5))
    if seg is not None:
        lab = np.where(seg[:, :, z] == 4, 3, seg[:, :, z]).T
        axes[4].imshow(np.ma.masked_equal(lab, 0), cmap=LABEL_COLOURS, vmin=0, vmax=3, origin="lower",
                       aspect=aspect, alpha=0.6, interpolation="nearest")
    axes[4].set_title("labels 1/2/4" if seg is not None else "no segmentation")
    for ax in axes:
        ax.set_axis_off()
    vox = "x".join(f"{v:g}" for v in zooms)
    fig.suptitle(f"site {site}, {s.subject}: native grid {imgs['T1c'].shape} at {vox} mm, "
                 f"orientation {''.join(nib.aff2axcodes(nib.load(s.images['T1c']).affine))}", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return Path(out_png)
