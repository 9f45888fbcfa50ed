"""The whole preprocessing of one subject as one job, resumable step by step.

One Snakemake job per subject (rule ``preprocess_subject``) and the subcommand ``fedglioma preprocess subject``
both call :func:`preprocess_subject`: import, co-registration, skull stripping, atlas registration, N4 and
normalisation each write their atomic step folder (``01_import`` ... ``06_normalise``) as before, then the
network-grid training file and the QC figure and row are written.

The step folders are checkpoints. After a step has written its folder, a small stamp
``sub-{subject}/.{folder}.json`` records a key: a hash of the step's name, its parameters, what the site
declared, the template transform (by content), the previous step's key and the package version (for the import:
the raw files' paths, sizes and modification times). A rerun keeps every step whose stamp holds the key it would
compute now and redoes the first step whose key changed, and all steps after it. So an interrupted job resumes
where it stopped, and a changed ``preprocess.n4`` redoes N4 and normalisation only.

Why one job and not one per step: at the paper's size (2,018 subjects) eight jobs per subject made most of the
DAG (planning time) and, on a small machine, each job's start-up (Python, ANTs, torch imports) cost more than
the short steps themselves (docs/benchmarks.md, "DAG scaling").
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedglioma import __version__
from fedglioma.atomic import dumps, write_json
from fedglioma.config import SiteRow
from fedglioma.constants import MAX_IMAGE_MB
from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.faults import fault_point
from fedglioma.io.files import read_json
from fedglioma.io.layouts import discover

log = logging.getLogger(__name__)

#: (step, folder, config section under ``preprocess``) in the order they run. ``import`` has no section.
CHAIN: tuple[tuple[str, str, str | None], ...] = (
    ("import", "01_import", None),
    ("coregister", "02_coreg", "coregister"),
    ("skullstrip", "03_skullstrip", "skullstrip"),
    ("register_atlas", "04_atlas", "atlas"),
    ("n4", "05_n4", "n4"),
    ("normalise", "06_normalise", "normalise"),
)
#: The last step folder: what training files, QC and the mapping back to native space read.
FINAL_FOLDER = CHAIN[-1][1]


@dataclass(frozen=True)
class SubjectOutputs:
    """Where one subject's preprocessing writes, under the results folder (the rule's outputs)."""

    subject_dir: Path
    npz: Path
    grid: Path
    qc_png: Path
    qc_json: Path

    @property
    def final(self) -> Path:
        return self.subject_dir / FINAL_FOLDER

    def paths(self) -> dict[str, str]:
        """Every output path by name, the final step folder as ``final`` (for the rule's ``output:``)."""
        return {**{k: str(v) for k, v in asdict(self).items()}, "final": str(self.final)}


def subject_outputs(results: str | Path, site: str, subject: str) -> SubjectOutputs:
    """Output paths of one subject (``site``/``subject`` may be Snakemake wildcards such as ``{site}``)."""
    root = Path(results) / "sites" / site
    return SubjectOutputs(
        subject_dir=root / "prep" / f"sub-{subject}",
        npz=root / "prep" / f"sub-{subject}_train.npz",
        grid=root / "prep" / f"sub-{subject}_grid.json",
        qc_png=root / "qc" / f"sub-{subject}_qc.png",
        qc_json=root / "qc" / f"sub-{subject}_qc.json",
    )


def template_transform_dir(results: str | Path, space: str, target: str) -> Path | None:
    """The folder of the template-to-template transform a site in ``space`` needs (None: native or ``target``)."""
    if space in ("native", target):
        return None
    return Path(results) / "templates" / f"{space}_to_{target}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(dumps(obj, indent=None).encode()).hexdigest()


def _folder_digest(folder: Path) -> str:
    """Content hash of a (small) folder, e.g. the template transform."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _stamp(subject_dir: Path, folder: str) -> Path:
    return subject_dir / f".{folder}.json"


def _done(subject_dir: Path, folder: str, key: str) -> bool:
    """Whether ``folder`` holds the output of the step as it would run now (stamp with the same key)."""
    stamp = _stamp(subject_dir, folder)
    if not ((subject_dir / folder).is_dir() and stamp.is_file()):
        return False
    with contextlib.suppress(Exception):
        return bool(read_json(stamp, what="step stamp").get("key") == key)
    return False


def raw_files(row: SiteRow, subject: str, layout_options: Mapping[str, Any]) -> tuple[dict[str, Path], Path | None]:
    """The subject's raw images (by modality) and label map, found in the site's layout."""
    found = discover(row.path, row.layout, row.site, **dict(layout_options))
    match = [s for s in found.subjects if s.subject == subject]
    if not match:
        problems = [str(p) for p in found.problems if p.subject == subject]
        raise InputError("subject not found or incomplete" + (f" ({'; '.join(problems)})" if problems else ""),
                         site=row.site, subject=subject, file=row.path, fix="run `fedglioma cohort check-inputs`")
    return {m: Path(p) for m, p in match[0].images.items()}, (Path(match[0].seg) if match[0].seg else None)


def _file_facts(path: Path) -> list[Any]:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def preprocess_subject(row: SiteRow, subject: str, final: str, npz: str, grid: str, qc_png: str, qc_json: str, *,
                       preprocess_cfg: Mapping[str, Any], qc_cfg: Mapping[str, Any], layouts_cfg: Mapping[str, Any],
                       template_transform: str | None = None, inputs_cfg: Mapping[str, Any] | None = None) -> None:
    """Rule ``preprocess_subject`` / ``fedglioma preprocess subject``: one subject of site ``row``, from its raw
    images to the last step folder ``final`` (``sub-{subject}/06_normalise``; the other step folders lie beside
    it and are kept while unchanged), the training file, and the QC figure and row.

    Args:
        row: the site's ``sites.tsv`` row (layout, path, labels, what it declares).
        subject: subject ID.
        final: the last step folder, ``.../prep/sub-{subject}/06_normalise``.
        npz, grid: the network-grid training file and its grid JSON.
        qc_png, qc_json: the QC figure and row.
        preprocess_cfg: the config's ``preprocess`` section (a section per step, and ``grid``).
        qc_cfg: the config's ``qc`` section.
        layouts_cfg: the config's ``layouts`` section (options of the site's layout).
        template_transform: folder of the template-to-template transform, for a site in another template space.
        inputs_cfg: the config's ``inputs`` section (``max_image_mb``: the largest raw image loaded).
    """
    from fedglioma.config import layout_options
    from fedglioma.preprocess.grid import training_file
    from fedglioma.preprocess.qc import qc as qc_subject
    from fedglioma.settings import InputsConfig, section

    out = SubjectOutputs(Path(final).parent, Path(npz), Path(grid), Path(qc_png), Path(qc_json))
    if out.final != Path(final):
        raise ConfigError(f"{final}: the last step folder must be named {FINAL_FOLDER}")
    require_transform(row.declared, preprocess_cfg, template_transform, site=row.site)
    raw, seg = raw_files(row, subject, layout_options(row, layouts_cfg))
    run_chain(raw, seg, out.subject_dir, site=row.site, subject=subject, declared=row.declared,
              preprocess_cfg=preprocess_cfg, tumour_labels=row.tumour_labels,
              non_tumour_labels=row.non_tumour_labels, template_transform=template_transform,
              max_image_mb=section(InputsConfig, inputs_cfg, "inputs").max_image_mb)
    training_file(out.final, out.npz, site=row.site, subject=subject, grid_json=out.grid,
                  **dict(preprocess_cfg.get("grid") or {}))
    qc_subject(out.subject_dir, out.qc_png, out.qc_json, thresholds=dict(qc_cfg.get("thresholds") or {}),
               site=row.site, subject=subject)


def require_transform(declared: Declared, preprocess_cfg: Mapping[str, Any], template_transform: str | Path | None,
                      *, site: str) -> None:
    """Images in another template space than the recipe's need the template-to-template transform: fail first,
    naming the command that makes it."""
    target = str((preprocess_cfg.get("atlas") or {}).get("template", "MNI152"))
    needed = template_transform_dir("results", declared.space, target)
    if needed is not None and template_transform is None:
        raise ConfigError(f"site {site}: the images are in {declared.space} space and need the "
                          f"{declared.space}-to-{target} template transform; fix: run `fedglioma preprocess "
                          f"template-transform --source {declared.space} --target {target} --out-dir {needed}` "
                          f"and pass --template-transform {needed}")


def run_chain(raw: Mapping[str, Path], seg: Path | None, subject_dir: Path, *, site: str, subject: str,
              declared: Declared, preprocess_cfg: Mapping[str, Any], tumour_labels: Sequence[int] = (),
              non_tumour_labels: Sequence[int] = (), template_transform: str | Path | None = None,
              on_step: Callable[[str, float], None] | None = None, max_image_mb: float = MAX_IMAGE_MB) -> Path:
    """The preprocessing chain of one subject from its raw files to ``subject_dir/06_normalise`` (returned).

    The one implementation of the chain: the workflow's subjects (:func:`preprocess_subject`) and new patients
    (:func:`fedglioma.predict.patient.predict_patient`, with a bundle's recipe as ``preprocess_cfg``) both run
    it. Steps whose stamp still matches are kept (module docstring).

    Args:
        raw: modality -> raw image file; ``seg``: the raw label map (or ``None``).
        subject_dir: the subject's folder of step folders.
        declared: what was already done to the images (skull stripping, co-registration, space).
        preprocess_cfg: the ``preprocess`` config section (a section per step).
        tumour_labels, non_tumour_labels: label values of ``seg`` (whole tumour, not tumour).
        template_transform: folder of the template-to-template transform, for images in another template space.
        on_step: called with (step, seconds) after each step that ran (timings of `fedglioma predict`).
        max_image_mb: largest raw image the import loads (config ``inputs.max_image_mb``).
    """
    from fedglioma.preprocess.importing import import_subject
    from fedglioma.preprocess.steps import run_step

    require_transform(declared, preprocess_cfg, template_transform, site=site)
    transform = Path(template_transform) if template_transform is not None else None
    raw = {m: Path(p) for m, p in raw.items()}
    key = _digest({
        "step": "import", "version": __version__, "declared": asdict(declared),
        "raw": {m: _file_facts(p) for m, p in sorted(raw.items())}, "seg": _file_facts(seg) if seg else None,
        "tumour_labels": list(tumour_labels), "non_tumour_labels": list(non_tumour_labels),
    })
    subject_dir = Path(subject_dir)
    subject_dir.mkdir(parents=True, exist_ok=True)
    previous: Path | None = None
    redo = False
    for step, folder, section in CHAIN:
        if step != "import":
            params = dict(preprocess_cfg.get(section or step) or {})
            key = _digest({"step": step, "previous": key, "params": params, "declared": asdict(declared),
                           "template_transform": _folder_digest(transform)
                           if (step == "register_atlas" and transform is not None) else None})
        out_dir = subject_dir / folder
        if not redo and _done(subject_dir, folder, key):
            log.info("%s/%s: %s kept (%s is up to date)", site, subject, step, folder)
        else:
            redo = True  # every later step reads this one: redo them all
            _stamp(subject_dir, folder).unlink(missing_ok=True)
            log.info("%s/%s: %s -> %s", site, subject, step, folder)
            start = time.perf_counter()
            if step == "import":
                import_subject(raw, seg, tuple(tumour_labels), out_dir, site=site, subject=subject,
                               non_tumour_labels=tuple(non_tumour_labels), declared=declared,
                               max_image_mb=max_image_mb)
            else:
                assert previous is not None
                run_step(step, previous, out_dir, site=site, subject=subject, params=params, declared=declared,
                         template_transform=transform if step == "register_atlas" else None)
            fault_point(f"preprocess/{site}/{subject}/{step}/before-stamp")  # folder written, stamp not
            write_json(_stamp(subject_dir, folder), {"step": step, "key": key})
            fault_point(f"preprocess/{site}/{subject}/{step}/done")
            if on_step is not None:
                on_step(step, time.perf_counter() - start)
        previous = out_dir
    assert previous is not None
    return previous
