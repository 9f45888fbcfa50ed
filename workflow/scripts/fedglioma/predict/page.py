"""The one-page result of a prediction: a PNG with the tumour mask over the T1c in three views and the markers,
and a standalone HTML page (Jinja2 template ``predict/templates/prediction.html.j2``, autoescaped) that embeds
it with the markers table, QC and the bundle's provenance."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedglioma.atomic import atomic_path

#: Views: (title, axis of the slice in RAS canonical voxel order).
VIEWS: tuple[tuple[str, int], ...] = (("axial", 2), ("coronal", 1), ("sagittal", 0))


def _slices(t1c: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...]) -> list[tuple[str, np.ndarray, np.ndarray,
                                                                                          float]]:
    """Per view: (title, image slice, mask slice, aspect), through the tumour's centre (the volume's centre
    without tumour). Slices are oriented for display: anterior/superior up, patient's right on the left."""
    centre = (np.argwhere(mask).mean(0) if mask.any() else np.asarray(t1c.shape) / 2).round().astype(int)
    out = []
    for title, axis in VIEWS:
        idx = [slice(None)] * 3
        idx[axis] = int(np.clip(centre[axis], 0, t1c.shape[axis] - 1))
        img, msk = t1c[tuple(idx)], mask[tuple(idx)]
        rest = [a for a in range(3) if a != axis]
        # after rot90 the rows run along rest[1] and the columns along rest[0]: pixel height / width
        out.append((title, np.rot90(img), np.rot90(msk), float(zooms[rest[1]] / zooms[rest[0]])))
    return out


def prediction_figure(doc: Mapping[str, Any], t1c_file: str | Path, mask_file: str | Path, out_png: str | Path) -> None:
    """Three views of the input T1c with the predicted whole tumour outlined, and the markers underneath."""
    from fedglioma.evaluate.figures import new_figure, save_png

    t1c_img = nib.as_closest_canonical(nib.load(str(t1c_file)))
    mask_img = nib.as_closest_canonical(nib.load(str(mask_file)))
    t1c = np.asarray(t1c_img.dataobj, dtype=np.float32)
    t1c = t1c[..., 0] if t1c.ndim == 4 else t1c
    mask = np.asarray(mask_img.dataobj) > 0
    lo, hi = np.percentile(t1c[np.isfinite(t1c)], [1, 99.5]) if np.isfinite(t1c).any() else (0.0, 1.0)
    fig = new_figure(10.5, 4.6)
    axes = fig.subplots(1, 3)
    for ax, (title, img, msk, aspect) in zip(axes, _slices(t1c, mask, t1c_img.header.get_zooms()[:3]), strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect, interpolation="nearest")
        if msk.any():
            ax.contour(msk.astype(float), levels=[0.5], colors=["#ff3b30"], linewidths=1.2)
            ax.imshow(np.ma.masked_where(~msk, msk), cmap="autumn", alpha=0.25, aspect=aspect,
                      interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    markers = [doc["markers"][k] for k in ("idh", "codeletion", "mgmt", "grade") if k in doc["markers"]]
    text = "   ".join(f"{m['name']}: {m['probability']:.2f}" + (f" ({m['call']})" if m.get("call") else "")
                      for m in markers)
    qc = "QC FLAGGED: " + "; ".join(doc["qc"]["reasons"]) if doc["qc"]["flagged"] else "QC passed"
    fig.suptitle(f"{doc['subject']}: whole tumour {doc['tumour']['volume_ml']:.1f} mL (red outline)\n{text}\n{qc}"
                 f" -- {doc['use']}", fontsize=9)
    save_png(fig, out_png)


def write_page(doc: Mapping[str, Any], t1c_file: str | Path, mask_file: str | Path, out_html: str | Path,
               out_png: str | Path) -> None:
    """Write the PNG and the standalone HTML page of one prediction."""
    import jinja2

    prediction_figure(doc, t1c_file, mask_file, out_png)
    env = jinja2.Environment(loader=jinja2.PackageLoader("fedglioma.predict", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    png = base64.b64encode(Path(out_png).read_bytes()).decode()
    html = env.get_template("prediction.html.j2").render(doc=doc, png=png)
    with atomic_path(out_html) as tmp:
        tmp.write_text(html)
