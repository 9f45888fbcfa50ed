"""Site folder layouts: find each subject's four modalities and segmentation.

A layout maps a site folder to :class:`Subject` records. Supported layouts
(``layout`` column of ``sites.tsv``):

==============  ===============================================================  =================
layout          files of one subject                                              default WT labels
==============  ===============================================================  =================
brats2021       ``BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``  1,2,4
brats2023       ``BraTS-GLI-XXXXX-YYY/BraTS-GLI-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}``   1,2,3
ucsf_pdgm       ``UCSF-PDGM-XXXX[_nifti]/UCSF-PDGM-XXXX_{T1,T1c,T2,FLAIR,             1,2,4
                tumor_segmentation}.nii.gz``
upenn_gbm       ``<ID>/<ID>_{T1,T1GD,T2,FLAIR}.nii.gz``, segmentation                1,2,4
                ``<ID>/<ID>_segm.nii.gz`` or ``images_segm/<ID>_segm.nii.gz``
egd             ``<ID>/{T1,T1GD,T2,FLAIR,MASK}.nii.gz``                               1
nnunet          ``imagesTr/<ID>_000{0..3}.nii.gz`` (+ ``imagesTs``), ``labelsTr/<ID>.nii.gz``;  per dataset
                channel order from config (default T1, T1c, T2, FLAIR)
==============  ===============================================================  =================

Discovery never raises on a bad subject: it returns the subjects it can
identify plus a list of :class:`~fedglioma.errors.InputError` problems, so
``check-inputs`` can list every problem at once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedglioma.constants import ID_PATTERN, MODALITIES
from fedglioma.errors import InputError

NII = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Subject:
    """One subject's input files at a site."""

    site: str
    subject: str
    images: dict[str, Path]
    seg: Path | None = None


@dataclass
class Discovery:
    """Result of scanning a site folder."""

    subjects: list[Subject] = field(default_factory=list)
    problems: list[InputError] = field(default_factory=list)


def _find(folder: Path, stem: str) -> Path | None:
    """Return ``folder/stem.nii.gz`` or ``folder/stem.nii`` (first that exists)."""
    for ext in NII:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _subject_dirs(root: Path, pattern: str) -> list[Path]:
    rx = re.compile(pattern)
    return sorted(p for p in root.iterdir() if p.is_dir() and rx.fullmatch(p.name))


def _per_folder(
    root: Path,
    site: str,
    folder_pattern: str,
    subject_of: Callable[[str], str],
    modality_stems: dict[str, Callable[[str], str]],
    seg_stems: Sequence[Callable[[Path, str], Path | None]],
) -> Discovery:
    """Generic scanner for layouts with one folder per subject."""
    out = Discovery()
    for folder in _subject_dirs(root, folder_pattern):
        sid = subject_of(folder.name)
        images: dict[str, Path] = {}
        for mod, stem_of in modality_stems.items():
            stem = stem_of(sid)
            p = _find(folder, stem)
            if p is None:
                out.problems.append(
                    InputError(
                        f"modality {mod} missing (expected {stem}.nii.gz)",
                        site=site,
                        subject=sid,
                        file=folder / f"{stem}.nii.gz",
                        fix=f"add the {mod} image or remove the subject folder",
                    )
                )
            else:
                images[mod] = p
        seg = None
        for seg_of in seg_stems:
            seg = seg_of(folder, sid)
            if seg is not None:
                break
        if len(images) == len(modality_stems):
            out.subjects.append(Subject(site, sid, images, seg))
    return out


def _seg_in(stem_of: Callable[[str], str]) -> Callable[[Path, str], Path | None]:
    return lambda folder, sid: _find(folder, stem_of(sid))


def scan_brats2021(root: Path, site: str, **_: object) -> Discovery:
    names = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair"}
    return _per_folder(
        root,
        site,
        r"BraTS2021_\d+",
        lambda n: n,
        {m: (lambda sid, s=s: f"{sid}_{s}") for m, s in names.items()},
        [_seg_in(lambda sid: f"{sid}_seg")],
    )


def scan_brats2023(root: Path, site: str, **_: object) -> Discovery:
    names = {"T1": "t1n", "T1c": "t1c", "T2": "t2w", "FLAIR": "t2f"}
    return _per_folder(
        root,
        site,
        r"BraTS-[A-Z]+-\d+-\d+",
        lambda n: n,
        {m: (lambda sid, s=s: f"{sid}-{s}") for m, s in names.items()},
        [_seg_in(lambda sid: f"{sid}-seg")],
    )


def scan_ucsf_pdgm(root: Path, site: str, **_: object) -> Discovery:
    names = {"T1": "T1", "T1c": "T1c", "T2": "T2", "FLAIR": "FLAIR"}
    return _per_folder(
        root,
        site,
        r"UCSF-PDGM-\d+(_nifti)?",
        lambda n: n.removesuffix("_nifti"),
        {m: (lambda sid, s=s: f"{sid}_{s}") for m, s in names.items()},
        [_seg_in(lambda sid: f"{sid}_tumor_segmentation")],
    )


def scan_upenn_gbm(root: Path, site: str, **_: object) -> Discovery:
    names = {"T1": "T1", "T1c": "T1GD", "T2": "T2", "FLAIR": "FLAIR"}
    segm_dir = root / "images_segm"
    return _per_folder(
        root,
        site,
        r"(?!images_segm$)[^.].*",
        lambda n: n,
        {m: (lambda sid, s=s: f"{sid}_{s}") for m, s in names.items()},
        [_seg_in(lambda sid: f"{sid}_segm"), lambda _f, sid: _find(segm_dir, f"{sid}_segm") if segm_dir.is_dir() else None],
    )


def scan_egd(root: Path, site: str, **_: object) -> Discovery:
    names = {"T1": "T1", "T1c": "T1GD", "T2": "T2", "FLAIR": "FLAIR"}
    return _per_folder(
        root,
        site,
        r"[^.].*",
        lambda n: n,
        {m: (lambda _sid, s=s: s) for m, s in names.items()},
        [_seg_in(lambda _sid: "MASK")],
    )


def scan_nnunet(root: Path, site: str, *, channels: Sequence[str] = MODALITIES, **_: object) -> Discovery:
    """nnU-Net raw dataset: ``imagesTr``/``imagesTs`` with ``_000k`` channels, ``labelsTr``."""
    if sorted(channels) != sorted(MODALITIES):
        raise InputError(
            f"nnunet channel order {list(channels)} must list each of {list(MODALITIES)} once",
            site=site,
            fix="set layouts.nnunet.channels in config.yaml",
        )
    out = Discovery()
    rx = re.compile(r"(?P<case>.+)_(?P<ch>\d{4})\.nii(\.gz)?")
    for split in ("imagesTr", "imagesTs"):
        folder = root / split
        if not folder.is_dir():
            continue
        cases: dict[str, dict[int, Path]] = {}
        for f in sorted(folder.iterdir()):
            m = rx.fullmatch(f.name)
            if m:
                cases.setdefault(m["case"], {})[int(m["ch"])] = f
        for case, chans in cases.items():
            missing = [k for k in range(len(channels)) if k not in chans]
            if missing:
                for k in missing:
                    out.problems.append(
                        InputError(
                            f"channel {k:04d} ({channels[k]}) missing",
                            site=site,
                            subject=case,
                            file=folder / f"{case}_{k:04d}.nii.gz",
                            fix="add the channel file",
                        )
                    )
                continue
            images = {channels[k]: chans[k] for k in range(len(channels))}
            seg = _find(root / "labelsTr", case) if (root / "labelsTr").is_dir() else None
            out.subjects.append(Subject(site, case, images, seg))
    return out


LAYOUTS: dict[str, Callable[..., Discovery]] = {
    "brats2021": scan_brats2021,
    "brats2023": scan_brats2023,
    "ucsf_pdgm": scan_ucsf_pdgm,
    "upenn_gbm": scan_upenn_gbm,
    "egd": scan_egd,
    "nnunet": scan_nnunet,
}

#: Whole-tumour label values of each public layout (the T2w/FLAIR hyperintense region).
DEFAULT_TUMOUR_LABELS: dict[str, tuple[int, ...]] = {
    "brats2021": (1, 2, 4),
    "brats2023": (1, 2, 3),
    "ucsf_pdgm": (1, 2, 4),
    "upenn_gbm": (1, 2, 4),
    "egd": (1,),
    "nnunet": (1, 2, 3),
}
#: Label values a layout's masks may hold that are not tumour (left out of the whole-tumour mask, not an error):
#: BraTS 2024 post-treatment masks (BraTS 2023+ naming) add 4 = resection cavity.
DEFAULT_NON_TUMOUR_LABELS: dict[str, tuple[int, ...]] = {"brats2023": (4,)}


def discover(root: str | Path, layout: str, site: str, **options: object) -> Discovery:
    """Scan a site folder in the given layout.

    Problems (missing modalities, invalid IDs, IDs equal after case folding, a file that is a link to outside
    the site folder) are collected, never raised, except for an unknown layout or a missing folder.
    In the EGD and UPenn-GBM layouts every folder not starting with ``.`` is a subject (one whose name is no
    valid ID is reported, not skipped).
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise InputError(
            f"unknown layout {layout!r}",
            site=site,
            fix=f"use one of {', '.join(sorted(LAYOUTS))} in the layout column of sites.tsv",
        )
    if not root.is_dir():
        raise InputError("site folder not found", site=site, file=root, fix="check the path column of sites.tsv")
    found = LAYOUTS[layout](root, site, **options)
    rx = re.compile(ID_PATTERN)
    seen: dict[str, Subject] = {}
    kept: list[Subject] = []
    inside = root.resolve()
    for s in found.subjects:
        outside = [p for p in [*s.images.values(), *([s.seg] if s.seg else [])]
                   if not p.resolve().is_relative_to(inside)]
        if outside:
            found.problems.extend(
                InputError(f"resolves through a link to {p.resolve()}, outside the site folder {root}", site=site, subject=s.subject,
                           file=p, fix="copy the file into the site folder (a site's jobs read only its own folder), "
                           "or point the path column of sites.tsv at the folder that holds it")
                for p in outside)
            continue
        if not rx.fullmatch(s.subject):
            found.problems.append(
                InputError(
                    f"subject ID {s.subject!r} has characters other than letters, digits, '-' and '_'",
                    site=site,
                    subject=s.subject,
                    file=s.images["T1c"],
                    fix="rename the subject",
                )
            )
            continue
        first = seen.get(s.subject.casefold())
        if first is not None:
            found.problems.append(
                InputError(
                    "duplicated subject ID" if first.subject == s.subject else f"subject ID equal to subject "
                    f"{first.subject} after case folding (their files would collide on case-insensitive file systems)",
                    site=site,
                    subject=s.subject,
                    file=s.images["T1c"],
                    fix=f"give it a unique ID, not only differing in case (also found at {first.images['T1c']})",
                )
            )
            continue
        seen[s.subject.casefold()] = s
        kept.append(s)
    found.subjects = kept
    return found
