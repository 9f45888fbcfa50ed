"""A site's training data: ``sub-{subject}_train.npz`` files plus ``labels.tsv``, and the site-local split."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from fedglioma.constants import GRADES, MODALITIES, TASKS
from fedglioma.errors import InputError

log = logging.getLogger(__name__)

TRAIN_FILE_RE = re.compile(r"^sub-(?P<subject>[A-Za-z0-9_-]+)_train\.npz$")
LABEL_COLUMNS: tuple[str, ...] = ("subject", *TASKS)
_MISSING = {"", "na", "nan", "n/a"}

Part = Literal["all", "train", "val"]


def subject_of(path: str | Path, *, site: str | None = None) -> str:
    """Subject ID of a training file name ``sub-{subject}_train.npz``."""
    m = TRAIN_FILE_RE.match(Path(path).name)
    if m is None:
        raise InputError("training file name is not sub-{subject}_train.npz", site=site, file=path)
    return m.group("subject")


def _cell(value: str, allowed: Sequence[int], col: str, *, site: str | None, subject: str, file: Path) -> float:
    v = value.strip()
    if v.lower() in _MISSING:
        return math.nan
    try:
        x = float(v)
    except ValueError:
        x = math.nan
    if not x.is_integer() or int(x) not in allowed:
        raise InputError(
            f"column {col} has value {value!r}, expected one of {list(allowed)} or empty",
            site=site,
            subject=subject,
            file=file,
            fix="correct the clinical table or its harmonisation",
        )
    return float(int(x))


def read_labels(path: str | Path, *, site: str | None = None) -> dict[str, np.ndarray]:
    """Read ``labels.tsv`` into ``{subject: float32 (4,)}`` in ``TASKS`` order.

    idh, codeletion and mgmt stay 0/1; grade 2/3/4 becomes class 0/1/2; an empty cell is NaN (missing).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InputError(f"labels unreadable ({exc})", site=site, file=p) from exc
    rows = list(csv.DictReader(text.splitlines(), delimiter="\t"))
    header = set(rows[0].keys()) if rows else set(text.splitlines()[0].split("\t") if text.strip() else [])
    missing = [c for c in LABEL_COLUMNS if c not in header]
    if missing:
        raise InputError(f"labels table lacks column(s) {missing}", site=site, file=p, fix="re-run the labels rule")
    out: dict[str, np.ndarray] = {}
    for row in rows:
        subject = (row["subject"] or "").strip()
        if subject.startswith("sub-"):
            subject = subject[len("sub-") :]
        if not subject:
            raise InputError("a row has an empty subject", site=site, file=p)
        if subject in out:
            raise InputError("subject listed twice", site=site, subject=subject, file=p)
        ctx: dict[str, Any] = {"site": site, "subject": subject, "file": p}
        vals = [_cell(row[t] or "", (0, 1), t, **ctx) for t in ("idh", "codeletion", "mgmt")]
        grade = _cell(row["grade"] or "", GRADES, "grade", **ctx)
        vals.append(grade if math.isnan(grade) else float(GRADES.index(int(grade))))
        out[subject] = np.asarray(vals, dtype=np.float32)
    return out


def _unit(seed: int, subject: str) -> float:
    """Stable pseudo-random number in [0, 1) for a subject (independent of other subjects)."""
    h = hashlib.sha256(f"{seed}\x1f{subject}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_subjects(subjects: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic site-local train/validation split by subject.

    A subject is in validation when ``sha256(seed, subject)`` mapped to [0, 1) is below ``val_fraction``, so a
    subject's side does not depend on the other subjects. There is always at least one training subject; with
    two or more subjects and ``val_fraction > 0`` there is at least one validation subject.

    Returns:
        ``(train, val)``, each sorted.
    """
    subs = sorted(set(subjects))
    u = {s: _unit(seed, s) for s in subs}
    val = [s for s in subs if u[s] < val_fraction]
    train = [s for s in subs if u[s] >= val_fraction]
    if not train and val:
        keep = max(val, key=lambda s: u[s])
        val.remove(keep)
        train.append(keep)
    if not val and val_fraction > 0 and len(train) >= 2:
        move = min(train, key=lambda s: u[s])
        train.remove(move)
        val.append(move)
    return sorted(train), sorted(val)


def load_training_file(
    path: str | Path, *, site: str | None = None, subject: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Load and check a training file: ``-> (image float32 (4,X,Y,Z), tumour uint8 (X,Y,Z) or None)``."""
    p = Path(path)
    ctx: dict[str, Any] = {"site": site, "subject": subject, "file": p}
    try:
        with np.load(p, allow_pickle=False) as z:
            if "image" not in z.files:
                raise InputError("training file has no 'image' array", fix="re-run the training_file rule", **ctx)
            image = np.asarray(z["image"])
            tumour = np.asarray(z["tumour"]) if "tumour" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"training file unreadable ({exc})", fix="re-run the training_file rule", **ctx) from exc
    if image.ndim != 4 or image.shape[0] != len(MODALITIES):
        raise InputError(f"image has shape {image.shape}, expected ({len(MODALITIES)}, X, Y, Z)", **ctx)
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InputError("image holds NaN or Inf", fix="re-run the normalise step", **ctx)
    if tumour is not None and tumour.shape != image.shape[1:]:
        raise InputError(f"tumour mask has shape {tumour.shape}, image grid is {image.shape[1:]}", **ctx)
    return image, tumour


class SiteDataset(Dataset):
    """The subjects of one site (or one part of its split).

    Each item is a dict:

    - ``image``: float32 ``(4, X, Y, Z)``
    - ``tumour``: float32 ``(1, X, Y, Z)`` (zeros when the subject has no mask)
    - ``has_seg``: bool scalar tensor
    - ``labels``: float32 ``(4,)`` in ``TASKS`` order (grade as class 0/1/2), NaN = missing
    - ``subject``: str

    Files are read on access (a site may not fit in memory). Subjects with a training file but no row in
    ``labels.tsv`` have all labels missing.
    """

    def __init__(
        self,
        npz_files: Sequence[str | Path],
        labels: str | Path | Mapping[str, np.ndarray],
        *,
        site: str | None = None,
        part: Part = "all",
        val_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.site = site
        files: dict[str, Path] = {}
        for f in npz_files:
            s = subject_of(f, site=site)
            if s in files:
                raise InputError("two training files for one subject", site=site, subject=s, file=f)
            files[s] = Path(f)
        self.labels = dict(labels) if isinstance(labels, Mapping) else read_labels(labels, site=site)
        unlabelled = sorted(set(files) - set(self.labels))
        if unlabelled:
            log.warning("site %s: %d subject(s) without a labels row: %s", site, len(unlabelled), unlabelled[:5])
        train, val = split_subjects(list(files), val_fraction, seed)
        chosen = {"all": sorted(files), "train": train, "val": val}[part]
        self.subjects: list[str] = chosen
        self.files: list[Path] = [files[s] for s in chosen]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, i: int) -> dict[str, Any]:
        subject = self.subjects[i]
        image, tumour = load_training_file(self.files[i], site=self.site, subject=subject)
        has_seg = tumour is not None
        seg = tumour.astype(np.float32)[None] if has_seg else np.zeros((1, *image.shape[1:]), dtype=np.float32)
        labels = self.labels.get(subject, np.full(len(TASKS), np.nan, dtype=np.float32))
        return {
            "image": torch.from_numpy(image),
            "tumour": torch.from_numpy(np.ascontiguousarray(seg > 0, dtype=np.float32)),
            "has_seg": torch.tensor(has_seg),
            "labels": torch.from_numpy(np.asarray(labels, dtype=np.float32).copy()),
            "subject": subject,
        }


def collate(samples: Sequence[Mapping[str, Any]], *, site: str | None = None) -> dict[str, Any]:
    """Stack samples into a batch: ``image`` ``(B,4,X,Y,Z)``, ``tumour`` ``(B,1,X,Y,Z)``, ``has_seg`` ``(B,)``,
    ``labels`` ``(B,4)``, ``subject`` list."""
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) > 1:
        raise InputError(
            f"training files of one site have different grids {sorted(shapes)}",
            site=site,
            fix="re-run the training_file rule with one network grid",
        )
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "tumour": torch.stack([s["tumour"] for s in samples]),
        "has_seg": torch.stack([s["has_seg"] for s in samples]),
        "labels": torch.stack([s["labels"] for s in samples]),
        "subject": [s["subject"] for s in samples],
    }
