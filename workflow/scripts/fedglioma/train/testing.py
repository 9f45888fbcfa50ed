"""Tiny synthetic site data for tests and benchmarks (not for science)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_site(
    folder: str | Path,
    n_subjects: int = 6,
    size: int = 16,
    *,
    seed: int = 0,
    without_mask: tuple[int, ...] = (2,),
) -> tuple[list[Path], Path]:
    """Write ``n_subjects`` training files ``sub-{NNN}_train.npz`` and a ``labels.tsv`` into ``folder``.

    Each image is ``(4, size, size, size)`` noise with a bright cube (the tumour) whose size and brightness
    depend on the labels, so the tasks are learnable. Subjects listed in ``without_mask`` have no tumour mask;
    some labels are left empty (missing).

    Returns:
        ``(npz_files, labels_tsv)``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: list[Path] = []
    rows = ["subject\tidh\tcodeletion\tmgmt\tgrade"]
    for i in range(n_subjects):
        idh, mgmt, grade = i % 2, (i // 2) % 2, (2, 3, 4)[i % 3]
        codel = "" if (i % 4 == 3 or not idh) else str((i // 4) % 2)
        image = rng.normal(0.0, 0.3, size=(4, size, size, size)).astype(np.float32)
        tumour = np.zeros((size,) * 3, dtype=np.uint8)
        lo = size // 4 + (i % 3)
        hi = lo + size // 4 + grade - 2
        tumour[lo:hi, lo:hi, lo:hi] = 1
        image[:, tumour > 0] += 1.0 + idh
        image[3, tumour > 0] += mgmt
        arrays = {"image": image, "brain": np.ones((size,) * 3, dtype=np.uint8)}
        if i not in without_mask:
            arrays["tumour"] = tumour
        f = folder / f"sub-{i:03d}_train.npz"
        np.savez_compressed(f, **arrays)
        files.append(f)
        grade_cell = "" if i % 5 == 4 else str(grade)
        rows.append(f"{i:03d}\t{idh}\t{codel}\t{mgmt}\t{grade_cell}")
    labels = folder / "labels.tsv"
    labels.write_text("\n".join(rows) + "\n")
    return files, labels
