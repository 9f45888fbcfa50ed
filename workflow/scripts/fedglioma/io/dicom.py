"""DICOM input: find an exam's series, choose one per modality, convert them to NIfTI with dcm2niix.

Three steps, each usable alone:

- :func:`scan_series` reads every file under a folder with pydicom (headers only; pixel data are located, never
  loaded) and groups them by SeriesInstanceUID into :class:`SeriesInfo` records. A file that is not readable
  DICOM is an :class:`~fedglioma.errors.InputError` naming it, except obvious non-DICOM files
  (:data:`IGNORED_NAMES`, :data:`IGNORED_SUFFIXES`).
- :func:`select_series` picks one series per modality of :data:`~fedglioma.constants.MODALITIES`, by a mapping
  (SeriesNumber or a regex on SeriesDescription) or by the defaults in :data:`DEFAULT_RULES`. Anything unclear
  (no candidate, several, one series for two modalities, a single slice, a 4D series) is refused with a list of
  every series found and how to pass a mapping.
- :func:`convert_exam` runs the dcm2niix binary of the ``dcm2niix`` wheel on each chosen series alone and writes
  ``sub-{subject}_{modality}.nii.gz`` into the work folder, all four or none; dcm2niix's anonymised JSON sidecars
  stay in ``work_dir/dcm2niix/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, MediaStorageDirectoryStorage

from fedglioma.atomic import write_json
from fedglioma.constants import ID_PATTERN, MODALITIES
from fedglioma.errors import InputError

log = logging.getLogger(__name__)

#: File names that are never DICOM images and are skipped by :func:`scan_series` (compared case-insensitively).
IGNORED_NAMES: frozenset[str] = frozenset({"dicomdir", "thumbs.db", "desktop.ini", "lockfile", "version"})
#: File suffixes that are never DICOM images and are skipped by :func:`scan_series` (compared case-insensitively).
IGNORED_SUFFIXES: frozenset[str] = frozenset({
    ".json", ".txt", ".md", ".csv", ".tsv", ".xml", ".html", ".htm", ".pdf", ".log", ".ini", ".cfg",
    ".jpg", ".jpeg", ".png", ".gif", ".bmp", ".nii", ".gz", ".bval", ".bvec", ".zip", ".exe", ".sh", ".bat",
})

#: Bytes above which pydicom defers reading a value (pixel data, vendor blobs): headers are read, images are not.
_DEFER_SIZE = 1024
_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF


def _word(pattern: str) -> str:
    """``pattern`` as a whole token: not glued to letters or digits (``_``, ``-``, spaces and ``+`` separate)."""
    return rf"(?<![a-z0-9])(?:{pattern})(?![a-z0-9])"


#: Words that mark a post-contrast (gadolinium) series.
CONTRAST_WORDS = (r"post|gd|gad|gado\w*|contrast|kontrast|\+\s*c(?![a-z])|" + _word(r"c\+|ce|km") + r"|t1c")
#: Words that mark an explicitly pre-contrast series (they cancel a contrast word: "T1 pre-contrast" is T1).
PRE_WORDS = _word("pre(?:contrast|gd|gad)?") + r"|w/o|without|non[-_ ]?(?:contrast|con|gd)|nativ"
T1_WORDS = r"t1(?![0-9])|mp-?rage|spgr|bravo"
T2_WORDS = r"t2(?![0-9])"
FLAIR_WORDS = r"flair|dark[-_ ]?fluid"
#: Sequences that are none of the four structural modalities even when a description names T1 or T2.
OTHER_WORDS = (r"t2\s*\*|t2\s*star|swi|swan|hemo|dwi|diff|adc|trace|perf|dsc|dce|asl|angio|tof|mra|mrv|"
               r"spectro|svs|csi|" + _word("map|mapping"))

#: Default choice of a series per modality when no mapping is given: ``modality -> (include, exclude)``, two
#: regular expressions searched case-insensitively in SeriesDescription (ProtocolName when the description is
#: empty). A series is a candidate for a modality when ``include`` matches and ``exclude`` does not:
#:
#: - T1c: a contrast word (post, gd, gad, contrast, +c, c+, ce, km, t1c; e.g. "AX T1 POST GD", "MPRAGE GAD",
#:   "T1+C", "t1_ce"), and no pre-contrast word (pre, w/o, without, non-contrast), FLAIR, T2 or other-sequence
#:   word (swi, dwi, perfusion, map, ...).
#: - T1: t1, mprage, spgr or bravo, and no contrast word unless a pre-contrast word cancels it ("T1 pre
#:   contrast" is T1); "T1 FLAIR" is T1.
#: - T2: t2, and no FLAIR, T1 or other-sequence word (T2*, T2 star, SWI are not T2).
#: - FLAIR: flair or dark-fluid, and no T1 or other-sequence word.
#:
#: Whatever the description, a localiser, a derived image or a non-MR series is never a candidate, and a series
#: with one slice position or several volumes cannot be chosen (see :meth:`SeriesInfo.skip_reason`).
DEFAULT_RULES: dict[str, tuple[str, str]] = {
    "T1": (T1_WORDS, rf"^(?!.*(?:{PRE_WORDS})).*(?:{CONTRAST_WORDS})|{OTHER_WORDS}"),
    "T1c": (CONTRAST_WORDS, rf"{PRE_WORDS}|{FLAIR_WORDS}|{T2_WORDS}|{OTHER_WORDS}"),
    "T2": (T2_WORDS, rf"{FLAIR_WORDS}|{T1_WORDS}|{OTHER_WORDS}"),
    "FLAIR": (FLAIR_WORDS, rf"{T1_WORDS}|{OTHER_WORDS}"),
}

#: How a user chooses series, for error messages (the predict command's ``--series`` option).
MAPPING_FIX = ("pass a mapping from modality to SeriesNumber or to a regular expression on SeriesDescription, "
               "e.g. --series T1c=7 or --series 'FLAIR=ax.*flair'")

_LOCALISER_WORDS = re.compile(r"locali[sz]er|scout|survey|3[-_ ]?plane|tri[-_ ]?pilot|aahead", re.IGNORECASE)
_SUBJECT = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series as found on disk (header facts only; no pixel data are read).

    ``n_images`` counts image frames (one per classic file, ``NumberOfFrames`` per enhanced file);
    ``n_positions`` the distinct slice positions (ImagePositionPatient to 0.01 mm); ``rows``/``cols`` are
    ``None`` when the images of the series differ in size.
    """

    uid: str
    number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    n_instances: int
    n_images: int
    n_positions: int
    n_orientations: int
    rows: int | None
    cols: int | None
    files: tuple[Path, ...]

    @property
    def label(self) -> str:
        """``#7 'AX T1 POST GD'``: how messages name the series."""
        return f"#{'?' if self.number is None else self.number} {self.description!r}"

    def skip_reason(self) -> str | None:
        """Why the series can never be a modality (localiser, derived, not MR, no image), or ``None``."""
        if self.modality.upper() != "MR":
            return f"not MR (Modality {self.modality or 'missing'})"
        if self.rows is None and self.n_images == 0:
            return "no image data"
        if "LOCALIZER" in (t.upper() for t in self.image_type) or _LOCALISER_WORDS.search(self.description):
            return "localiser"
        if self.image_type and self.image_type[0].upper() == "DERIVED":
            return "derived image (ImageType DERIVED, e.g. MPR, ADC, subtraction)"
        return None

    def shape_problem(self) -> str | None:
        """Why the series is not one 3D volume (single slice, several volumes, mixed geometry), or ``None``."""
        if self.n_positions == 0:
            return "no slice positions (ImagePositionPatient missing)"
        if self.n_positions == 1:
            return "a single 2D slice"
        if self.rows is None:
            return "images of different sizes"
        if self.n_orientations > 1:
            return f"{self.n_orientations} different slice orientations"
        if self.n_images > self.n_positions:
            return (f"4D/multi-volume: {self.n_images} images at {self.n_positions} slice positions "
                    "(several echoes, time points, b-values or repeats)")
        return None

    def summary(self) -> str:
        """One line for error messages: number, description, image type, slices, files."""
        kind = "\\".join(self.image_type) or "no ImageType"
        size = f"{self.cols}x{self.rows}" if self.rows is not None else "mixed sizes"
        return (f"{self.label} {self.modality or '?'} {kind}, {self.n_positions} slice position(s), "
                f"{self.n_images} image(s) {size} in {self.n_instances} file(s)")


def check_subject(subject: str) -> str:
    """Return ``subject`` if it is a valid ID (it becomes a file name), else raise :class:`InputError`."""
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        raise InputError(f"subject ID {subject!r} is not valid (it becomes the output file name)",
                         fix=f"use letters, digits, '_' and '-' only (pattern {ID_PATTERN})")
    return subject


# --------------------------------------------------------------------------------------------------- scanning
def _ignored(relative: Path) -> bool:
    """Whether a file (path relative to the exam folder) is obviously not DICOM: hidden, or a known name/suffix."""
    name = relative.name.lower()
    hidden = any(part.startswith(".") for part in relative.parts)
    return hidden or name in IGNORED_NAMES or relative.suffix.lower() in IGNORED_SUFFIXES


def _read_header(path: Path, *, subject: str) -> pydicom.Dataset | None:
    """The file's header, or ``None`` for a DICOMDIR; :class:`InputError` for anything pydicom cannot read."""
    fix = "copy the exam again from the PACS or remove the file from the folder"
    try:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE)
        except InvalidDicomError:  # no 128-byte preamble: old exports; accept only if it reads as an image
            ds = pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=True)
            if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
                raise InputError("not a DICOM file", subject=subject, file=path, fix=fix) from None
    except InputError:
        raise
    except Exception as exc:  # pydicom raises many types for junk and truncated files
        raise InputError(f"corrupt DICOM: pydicom cannot read it ({type(exc).__name__}: {exc})",
                         subject=subject, file=path, fix=fix) from exc
    sop = ds.get("SOPClassUID") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None)
    if sop is not None and str(sop) == MediaStorageDirectoryStorage:
        return None
    is_image = "Rows" in ds or (sop is not None and "Image Storage" in UID(str(sop)).name)
    if "SeriesInstanceUID" not in ds:
        raise InputError("corrupt DICOM: no SeriesInstanceUID (truncated header?)", subject=subject, file=path,
                         fix=fix)
    if is_image:
        problem = _pixel_problem(ds, path)
        if problem:
            raise InputError(f"corrupt DICOM: {problem}", subject=subject, file=path, fix=fix)
    return ds


def _pixel_problem(ds: pydicom.Dataset, path: Path) -> str | None:
    """Why an image file's pixel data are missing or shorter than its header says (truncated), or ``None``."""
    raw: Any = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if raw is None:
        return "no pixel data (truncated file?)"
    try:
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * max(int(ds.BitsAllocated), 8) // 8 * int(ds.get("NumberOfFrames", 1) or 1))
    except (AttributeError, TypeError, ValueError) as exc:
        return f"image size attributes missing or invalid ({exc})"
    value = getattr(raw, "value", None)
    length = int(getattr(raw, "length", len(value) if isinstance(value, bytes) else 0))
    if length == _UNDEFINED_LENGTH:  # encapsulated (compressed): pydicom has read the fragments already
        return None
    available = len(value) if isinstance(value, bytes) else path.stat().st_size - int(raw.value_tell)
    if min(length, available) < expected:
        return f"pixel data truncated ({max(min(length, available), 0)} of {expected} bytes)"
    return None


def _positions(ds: pydicom.Dataset) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
    """Slice positions and orientations of every frame of ``ds`` (classic or enhanced multi-frame)."""
    positions: list[tuple[float, ...]] = []
    orientations: list[tuple[float, ...]] = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        shared_iop = _nested(shared[0] if shared else None, "PlaneOrientationSequence", "ImageOrientationPatient")
        for item in per_frame:
            ipp = _nested(item, "PlanePositionSequence", "ImagePositionPatient")
            iop = _nested(item, "PlaneOrientationSequence", "ImageOrientationPatient") or shared_iop
            if ipp:
                positions.append(tuple(round(float(v), 2) for v in ipp))
            if iop:
                orientations.append(tuple(round(float(v), 3) for v in iop))
        return positions, orientations
    if ds.get("ImagePositionPatient"):
        positions.append(tuple(round(float(v), 2) for v in ds.ImagePositionPatient))
    if ds.get("ImageOrientationPatient"):
        orientations.append(tuple(round(float(v), 3) for v in ds.ImageOrientationPatient))
    return positions, orientations


def _nested(item: pydicom.Dataset | None, sequence: str, keyword: str) -> Any:
    if item is None or not item.get(sequence):
        return None
    return item.get(sequence)[0].get(keyword)


def scan_series(folder: Path, *, subject: str) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (searched recursively), sorted by SeriesNumber then description.

    Headers are read with pydicom without loading pixel data; files are grouped by SeriesInstanceUID. Obvious
    non-DICOM files (DICOMDIR, hidden files, :data:`IGNORED_NAMES`, :data:`IGNORED_SUFFIXES` such as ``.json``
    and ``.txt``) are skipped; any other file pydicom cannot read, or an image file whose pixel data are
    missing or truncated, is an :class:`InputError` naming it. A folder without any DICOM series is one too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("DICOM folder not found", subject=subject, file=folder, fix="check the path of the exam")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if _ignored(path.relative_to(folder)):
            continue
        ds = _read_header(path, subject=subject)
        if ds is not None:
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    if not groups:
        raise InputError("no DICOM series found", subject=subject, file=folder,
                         fix="give the folder that holds the exam's DICOM files")
    out = [_series_info(uid, members) for uid, members in groups.items()]
    return sorted(out, key=lambda s: (s.number if s.number is not None else 1 << 30, s.description, s.uid))


def _series_info(uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> SeriesInfo:
    first = members[0][1]
    positions: set[tuple[float, ...]] = set()
    orientations: set[tuple[float, ...]] = set()
    sizes: set[tuple[int, int]] = set()
    n_images = 0
    for _, ds in members:
        pos, ori = _positions(ds)
        positions.update(pos)
        orientations.update(ori)
        if "Rows" in ds and "Columns" in ds:
            sizes.add((int(ds.Rows), int(ds.Columns)))
            n_images += int(ds.get("NumberOfFrames", 1) or 1)
    number = first.get("SeriesNumber")
    description = str(first.get("SeriesDescription") or "").strip() or str(first.get("ProtocolName") or "").strip()
    image_type = first.get("ImageType")
    image_type = () if image_type is None else (str(image_type),) if isinstance(image_type, str) else tuple(
        str(t) for t in image_type)
    rows, cols = next(iter(sizes)) if len(sizes) == 1 else (None, None)
    return SeriesInfo(
        uid=uid,
        number=None if number in (None, "") else int(number),
        description=description,
        modality=str(first.get("Modality") or ""),
        image_type=image_type,
        n_instances=len(members),
        n_images=n_images,
        n_positions=len(positions),
        n_orientations=len(orientations),
        rows=rows,
        cols=cols,
        files=tuple(p for p, _ in members),
    )


# -------------------------------------------------------------------------------------------------- selection
def default_modalities(description: str) -> list[str]:
    """The modalities whose :data:`DEFAULT_RULES` match ``description`` (normally zero or one).

    >>> [default_modalities(d) for d in ("AX T1 POST GD", "t1_mprage_sag", "T2 FLAIR", "t2_tse_tra", "T2*")]
    [['T1c'], ['T1'], ['FLAIR'], ['T2'], []]
    """
    return [m for m, (include, exclude) in DEFAULT_RULES.items()
            if re.search(include, description, re.IGNORECASE) and not re.search(exclude, description, re.IGNORECASE)]


def _check_mapping(mapping: Mapping[str, int | str], *, subject: str, folder: Path) -> dict[str, int | re.Pattern[str]]:
    """Validate a user mapping: known modalities, SeriesNumbers (digit strings too) or valid regexes."""
    out: dict[str, int | re.Pattern[str]] = {}
    for modality, spec in mapping.items():
        if modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r} in the series mapping", subject=subject, file=folder,
                             fix=f"use one of {', '.join(MODALITIES)}")
        if isinstance(spec, bool) or not isinstance(spec, int | str) or (isinstance(spec, str) and not spec.strip()):
            raise InputError(f"series mapping {modality}={spec!r} is neither a SeriesNumber nor a regular expression",
                             subject=subject, file=folder, fix=MAPPING_FIX)
        if isinstance(spec, int) or spec.strip().isdigit():
            out[modality] = int(spec)
            continue
        try:
            out[modality] = re.compile(spec, re.IGNORECASE)
        except re.error as exc:
            raise InputError(f"series mapping {modality}={spec!r} is not a valid regular expression ({exc})",
                             subject=subject, file=folder, fix=MAPPING_FIX) from exc
    return out


def _matches(info: SeriesInfo, spec: int | re.Pattern[str]) -> bool:
    return info.number == spec if isinstance(spec, int) else bool(spec.search(info.description))


def _choose(
    modality: str,
    series: Sequence[SeriesInfo],
    spec: int | re.Pattern[str] | None,
    *,
    exclude: set[str],
    sole: bool = False,
) -> tuple[SeriesInfo | None, str | None]:
    """The series for ``modality`` and ``None``, or ``None`` and the problem.

    ``spec`` is the user's choice (SeriesNumber or compiled regex); without it :data:`DEFAULT_RULES` decide,
    ignoring the series in ``exclude`` (chosen explicitly for another modality). ``sole``: a folder given for
    this modality alone, whose one usable series is taken whatever its description.
    """
    how = ("SeriesNumber " + str(spec) if isinstance(spec, int) else f"description /{spec.pattern}/"
           if spec is not None else "the default description rules")
    if spec is not None:
        matched = [s for s in series if _matches(s, spec)]
    elif sole and len(usable := [s for s in series if s.skip_reason() is None]) == 1:
        matched = usable
    else:
        matched = [s for s in series if s.uid not in exclude and modality in default_modalities(s.description)]
    if not matched:
        return None, f"{modality}: no series matches {how}"
    skipped = [s for s in matched if s.skip_reason() is not None]
    candidates = [s for s in matched if s.skip_reason() is None]
    if not candidates:
        return None, f"{modality}: {how} matches only {_join(skipped, with_reason=True)}"
    whole = [s for s in candidates if s.shape_problem() is None]
    if len(whole) == 1 and spec is None:  # defaults: a single 3D series among 2D/4D look-alikes is the one
        return whole[0], None
    if len(candidates) > 1:
        return None, f"{modality}: {len(candidates)} candidate series match {how}: {_join(candidates)}"
    chosen = candidates[0]
    if (problem := chosen.shape_problem()) is not None:
        return None, f"{modality}: series {chosen.label} is {problem}, not one 3D volume"
    return chosen, None


def _join(series: Sequence[SeriesInfo], *, with_reason: bool = False) -> str:
    return ", ".join(s.label + (f" ({s.skip_reason()})" if with_reason else "") for s in series)


def _listing(series: Sequence[SeriesInfo], chosen: Mapping[str, SeriesInfo]) -> str:
    """Every series with why it was skipped, which modality it matched or was chosen for."""
    by_uid: dict[str, list[str]] = defaultdict(list)
    for modality, info in chosen.items():
        by_uid[info.uid].append(modality)
    lines = []
    for s in series:
        if s.uid in by_uid:
            verdict = "chosen for " + " and ".join(by_uid[s.uid])
        elif (reason := s.skip_reason()) is not None:
            verdict = "skipped: " + reason
        else:
            matched = default_modalities(s.description)
            verdict = ("matches " + "/".join(matched)) if matched else "matches no modality by default"
            if (problem := s.shape_problem()) is not None:
                verdict += f"; {problem}"
        lines.append(f"  {s.summary()}: {verdict}")
    return "\n".join(lines)


def select_series(
    series: Sequence[SeriesInfo],
    mapping: Mapping[str, int | str] | None,
    *,
    subject: str,
    folder: Path,
) -> dict[str, SeriesInfo]:
    """One series per modality (``MODALITIES`` order), chosen by ``mapping`` or by :data:`DEFAULT_RULES`.

    ``mapping`` maps a modality to a SeriesNumber (an int, or a string of digits) or to a regular expression
    searched case-insensitively in SeriesDescription; modalities it leaves out are chosen by the defaults
    (never picking a series mapped explicitly to another modality). Localisers, derived images and non-MR
    series are never chosen. Raises one :class:`InputError` that lists every problem (no candidate, several
    candidates, one series for two modalities, a single slice, a 4D series) and every series found.
    """
    specs = _check_mapping(mapping or {}, subject=subject, folder=folder)
    found: dict[str, SeriesInfo] = {}
    trouble: dict[str, str] = {}
    explicit = [m for m in MODALITIES if m in specs]
    for modality in explicit + [m for m in MODALITIES if m not in specs]:  # explicit choices first
        pinned = {found[m].uid for m in explicit if m in found}
        info, problem = _choose(modality, series, specs.get(modality), exclude=pinned)
        if info is not None:
            found[modality] = info
        if problem is not None:
            trouble[modality] = problem
    chosen = {m: found[m] for m in MODALITIES if m in found}
    problems = [trouble[m] for m in MODALITIES if m in trouble]
    problems += _duplicates(chosen)
    if problems:
        raise InputError(_refusal(problems, series, chosen), subject=subject, file=folder, fix=MAPPING_FIX)
    for modality, info in chosen.items():
        log.info("subject %s: %s <- %s", subject, modality, info.summary())
    return chosen


def _duplicates(chosen: Mapping[str, SeriesInfo]) -> list[str]:
    """A problem for each series chosen for more than one modality."""
    by_uid: dict[str, list[str]] = defaultdict(list)
    for modality, info in chosen.items():
        by_uid[info.uid].append(modality)
    return [f"series {chosen[ms[0]].label} is chosen for {' and '.join(ms)}" for ms in by_uid.values() if len(ms) > 1]


def _refusal(problems: Sequence[str], series: Sequence[SeriesInfo], chosen: Mapping[str, SeriesInfo]) -> str:
    return ("cannot choose one 3D series per modality:\n" + "\n".join(f"  - {p}" for p in problems)
            + f"\nSeries found ({len(series)}):\n" + _listing(series, chosen))


def _select_per_folder(
    folders: Mapping[str, Path], mapping: Mapping[str, int | str] | None, *, subject: str
) -> dict[str, SeriesInfo]:
    """One series per modality from a folder per modality (its one usable series, or by mapping/defaults)."""
    missing = [m for m in MODALITIES if m not in folders]
    unknown = [m for m in folders if m not in MODALITIES]
    if missing or unknown:
        raise InputError(f"the DICOM folders must be given for exactly {', '.join(MODALITIES)} "
                         f"(missing: {', '.join(missing) or 'none'}; unknown: {', '.join(unknown) or 'none'})",
                         subject=subject, fix="give one series folder per modality")
    specs = _check_mapping(mapping or {}, subject=subject, folder=Path(next(iter(folders.values()))))
    chosen: dict[str, SeriesInfo] = {}
    for modality in MODALITIES:
        folder = Path(folders[modality])
        found = scan_series(folder, subject=subject)
        info, problem = _choose(modality, found, specs.get(modality), exclude=set(), sole=True)
        if problem is not None or info is None:
            raise InputError(_refusal([problem or modality], found, {}), subject=subject, file=folder,
                             fix=MAPPING_FIX + ", or give a folder that holds only that series")
        chosen[modality] = info
    if problems := _duplicates(chosen):
        raise InputError("; ".join(problems), subject=subject, fix="give a different series folder per modality")
    return chosen


# ------------------------------------------------------------------------------------------------- conversion
def dcm2niix_binary() -> str:
    """Path of the dcm2niix binary shipped by the ``dcm2niix`` wheel."""
    try:
        import dcm2niix
    except ImportError as exc:  # pragma: no cover - environment problem, not input
        raise ModuleNotFoundError("the dcm2niix wheel is not installed; install fedglioma[preprocess]") from exc
    return str(dcm2niix.bin)


def _dcm2niix(in_dir: Path, out_dir: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        dcm2niix_binary(),
        "-g", "i",  # ignore any user defaults file (~/.dcm2nii.ini)
        "-b", "y", "-ba", "y",  # BIDS sidecar, anonymised (no names, IDs, dates)
        "-z", "i",  # gzip-compressed NIfTI (internal zlib: no dependence on pigz being installed)
        "-f", "series",  # fixed output name: nothing from the DICOM header reaches a file name
        "-d", "0",  # only the folder itself (it holds exactly one series)
        "-i", "n", "-x", "n", "-l", "o", "-v", "n",
        "-o", str(out_dir),
        str(in_dir),
    ]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _convert_one(info: SeriesInfo, modality: str, tmp: Path, *, subject: str) -> tuple[Path, Path | None]:
    """Convert one series from a folder of links to its files alone; return its NIfTI and JSON sidecar."""
    in_dir, out_dir = tmp / modality / "in", tmp / modality / "out"
    in_dir.mkdir(parents=True)
    out_dir.mkdir()
    for k, src in enumerate(info.files):
        link = in_dir / f"{k:06d}.dcm"
        try:
            link.symlink_to(src.resolve())
        except OSError:  # file systems without symlinks
            shutil.copy2(src, link)
    ctx = {"subject": subject, "file": info.files[0].parent}
    what = f"{modality} series {info.label}"
    try:
        result = _dcm2niix(in_dir, out_dir)
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"dcm2niix did not finish converting {what}", fix="check the series' files", **ctx) from exc
    if result.returncode != 0:
        raise InputError(f"dcm2niix failed on {what} (exit {result.returncode}):\n"
                         f"{_tail(result.stderr + result.stdout)}",
                         fix="check the series' files, or choose another series with a mapping", **ctx)
    images = sorted(p for p in out_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    if len(images) != 1:
        names = ", ".join(p.name.replace("series", "", 1) or p.name for p in images) or "none"
        raise InputError(f"dcm2niix made {len(images)} images from {what} (file name suffixes: {names}); the series "
                         "is split by echo, orientation, size or acquisition", fix=MAPPING_FIX + " naming a series "
                         "that is one 3D volume, or export that series alone", **ctx)
    image = images[0]
    try:
        shape = nib.load(str(image)).shape
    except Exception as exc:
        raise InputError(f"dcm2niix wrote an unreadable image from {what} ({exc})", fix="check the series", **ctx) from exc
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"dcm2niix made an image of shape {shape} from {what}, not one 3D volume",
                         fix=MAPPING_FIX + " naming a 3D series", **ctx)
    sidecar = image.with_name(image.name.split(".")[0] + ".json")
    return image, sidecar if sidecar.is_file() else None


@contextlib.contextmanager
def _all_or_nothing(moved: list[Path]) -> Iterator[None]:
    """Remove every file in ``moved`` (filled by the block) if the block fails."""
    try:
        yield
    except BaseException:
        for path in moved:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise


def convert_exam(
    dicom: Path | Mapping[str, Path],
    work_dir: Path,
    *,
    subject: str,
    series: Mapping[str, int | str] | None = None,
) -> dict[str, Path]:
    """Convert an exam's four series to ``work_dir/sub-{subject}_{modality}.nii.gz``; return modality -> path.

    ``dicom`` is one folder holding the exam (series chosen by :func:`select_series` with ``series`` as the
    mapping), or a modality -> folder mapping with one series folder per modality (``series`` may still pick
    within a folder). Each series is converted alone by the dcm2niix binary of the ``dcm2niix`` wheel (no shell)
    from a temporary folder of links to its files, with anonymised BIDS sidecars; the result must be exactly one
    3D image. Output names come only from ``subject`` (validated, ``^[A-Za-z0-9_-]+$``). Sidecars are kept in
    ``work_dir/dcm2niix/sub-{subject}_{modality}.json`` next to ``sub-{subject}_series.json`` (which series was
    chosen for which modality). All or nothing: on any error no new modality file is left in ``work_dir``.
    """
    check_subject(subject)
    work_dir = Path(work_dir)
    if isinstance(dicom, Mapping):
        chosen = _select_per_folder({m: Path(p) for m, p in dicom.items()}, series, subject=subject)
    else:
        chosen = select_series(scan_series(Path(dicom), subject=subject), series, subject=subject,
                               folder=Path(dicom))
    work_dir.mkdir(parents=True, exist_ok=True)
    sidecar_dir = work_dir / "dcm2niix"
    outputs = {m: work_dir / f"sub-{subject}_{m}.nii.gz" for m in chosen}
    moved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix=".dcm2niix-", dir=work_dir) as tmp_name, _all_or_nothing(moved):
        tmp = Path(tmp_name)
        converted = {m: _convert_one(info, m, tmp, subject=subject) for m, info in chosen.items()}
        sidecar_dir.mkdir(exist_ok=True)
        moved.append(sidecar_dir / f"sub-{subject}_series.json")
        write_json(moved[-1], {
            m: {"SeriesNumber": info.number, "SeriesDescription": info.description,
                "ImageType": list(info.image_type), "slices": info.n_positions, "files": info.n_instances}
            for m, info in chosen.items()})
        for modality, (_, sidecar) in converted.items():
            if sidecar is not None:
                target = sidecar_dir / f"sub-{subject}_{modality}.json"
                os.replace(sidecar, target)
                moved.append(target)
        for modality, (image, _) in converted.items():
            os.replace(image, outputs[modality])
            moved.append(outputs[modality])
    log.info("subject %s: converted %s into %s", subject, ", ".join(chosen), work_dir)
    return outputs
