"""Clinical-label harmonisation to the four targets (IDH, 1p/19q, MGMT, WHO grade).

Each site's clinical table maps to ``labels.tsv`` with columns
``subject, idh, codeletion, mgmt, grade``: idh 1 = mutant / 0 = wildtype,
codeletion 1 = codeleted / 0 = intact, mgmt 1 = methylated / 0 = unmethylated,
grade 2/3/4. A missing value stays missing (empty cell, NaN in pandas); it is
never imputed. An unknown spelling is an error naming the file, row and column.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedglioma.constants import GRADES, TASKS
from fedglioma.errors import InputError, raise_all
from fedglioma.settings import ClinicalConfig, ClinicalMapping, section

log = logging.getLogger(__name__)

MISSING = {"", "na", "n/a", "nan", "none", "unknown", "not available", "not assessed", "nos", "?", "-", "indeterminate",
           "n.d.", "nd", "not done", "not tested"}

#: Built-in spellings per target (lower-case, stripped); sites add their own in config.
SPELLINGS: dict[str, dict[str, float]] = {
    "idh": {
        **dict.fromkeys(["mutant", "mutated", "mut", "idh-mutant", "idh mutant", "idhmut", "idh-mut", "positive", "1", "yes", "true"], 1.0),
        **dict.fromkeys(["wildtype", "wild-type", "wild type", "wt", "idh-wildtype", "idh wildtype", "idhwt", "negative", "0", "no", "false"], 0.0),
    },
    "codeletion": {
        **dict.fromkeys(["codeleted", "co-deleted", "codeletion", "deleted", "1p/19q codeleted", "positive", "1", "yes", "true"], 1.0),
        **dict.fromkeys(["intact", "non-codeleted", "not codeleted", "non-codel", "retained", "negative", "0", "no", "false"], 0.0),
    },
    "mgmt": {
        **dict.fromkeys(["methylated", "methylation", "positive", "1", "yes", "true", "m"], 1.0),
        **dict.fromkeys(["unmethylated", "un-methylated", "not methylated", "negative", "0", "no", "false", "u"], 0.0),
    },
}

_ROMAN = {"ii": 2, "iii": 3, "iv": 4}
_GRADE_RX = re.compile(r"^(?:(?:cns\s*)?who\s*(?:cns\s*)?)?(?:grade\s*|g)?(?P<g>ii|iii|iv|[234])(?:\.0)?$")
_NUMBER_RX = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)\s*%?$")


def parse_grade(value: str) -> float | None:
    """Parse a WHO grade spelling: ``4``, ``IV``, ``G4``, ``grade 4``, ``WHO grade IV``, ``WHO CNS grade 4``,
    ``CNS WHO grade 4`` (WHO CNS 2021).

    Returns 2.0/3.0/4.0, NaN for a missing spelling, or None when unknown.
    """
    v = value.strip().lower()
    if v in MISSING:
        return float("nan")
    m = _GRADE_RX.match(v)
    if not m:
        return None
    g = m["g"]
    return float(_ROMAN.get(g, int(g) if g.isdigit() else 0)) or None


def site_mapping(clinical_cfg: Mapping[str, Any] | None, site: str) -> ClinicalMapping:
    """The mapping of ``site`` from the config section ``clinical:`` (``default`` with ``sites.<site>`` applied)."""
    return section(ClinicalConfig, clinical_cfg, "clinical").for_site(site)


def _code(task: str, raw: Any, mapping: ClinicalMapping) -> float | None:
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return float("nan")
    text = str(raw).strip()
    low = text.lower()
    extra = {k.strip().lower(): v for k, v in getattr(mapping.values, task).items()}
    if low in extra:
        text = str(extra[low])
        low = text.lower()
    if low in MISSING:
        return float("nan")
    if task == "grade":
        return parse_grade(text)
    cut = getattr(mapping.thresholds, task)
    if cut is not None and _NUMBER_RX.match(low):
        return 1.0 if float(low.rstrip("%").strip()) >= cut else 0.0
    return SPELLINGS[task].get(low)


#: Separators a clinical table may use: the one its suffix names (``,`` for ``.csv``, else a tab), or another
#: one of these when the header holds only that one and every line splits into the header's number of fields.
SEPARATORS = ("\t", ",", ";")
_SEP_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon"}


def table_separator(lines: list[str], expected: str, *, site: str, file: Path) -> str:
    """The separator of a clinical table's ``lines``: ``expected`` when the header holds it; else the one other
    separator of :data:`SEPARATORS` that the header holds and that splits every line alike (a European
    spreadsheet's ``;``-separated CSV with decimal commas); no separator at all: ``expected`` (one column).
    Anything else is ambiguous: :class:`InputError`."""
    header = lines[0] if lines else ""
    if expected in header:
        return expected
    found = [sep for sep in SEPARATORS if sep in header]
    if not found:
        return expected
    n = header.count(found[0])
    if len(found) == 1 and all(line.count(found[0]) == n for line in lines[1:] if line.strip()):
        return found[0]
    names = " and ".join(_SEP_NAMES[sep] for sep in found)
    raise InputError(f"the separator is ambiguous: the header has no {_SEP_NAMES[expected]} but {names}, and not "
                     "every row splits into the header's columns", site=site, file=file,
                     fix=f"save it as {'CSV (comma-separated)' if expected == ',' else 'TSV (tab-separated)'} "
                     "with one separator")


def read_table(path: str | Path, *, site: str) -> pd.DataFrame:
    """Read a clinical table (TSV, or CSV by its suffix) with every cell as a string.

    The text must be UTF-8; a byte-order mark (Excel's "CSV UTF-8") is dropped.
    A table without its suffix's separator is read with the other one it unambiguously uses
    (:func:`table_separator`, e.g. ``;``), else refused.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError("clinical table not found", site=site, file=p, fix="check the clinical column of sites.tsv")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc})", site=site, file=p,
                         fix="save it as UTF-8 TSV or CSV (e.g. Excel's \"CSV UTF-8\")") from exc
    lines = text.splitlines()
    sep = table_separator(lines, "," if p.suffix.lower() == ".csv" else "\t", site=site, file=p)
    if sep != ("," if p.suffix.lower() == ".csv" else "\t"):
        log.info("site %s: %s is %s-separated; read as such", site, p, _SEP_NAMES[sep])
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(f"clinical table cannot be parsed ({exc})", site=site, file=p, fix="save it as TSV or CSV") from exc


def harmonise(table: pd.DataFrame, mapping: ClinicalMapping, *, site: str, file: str | Path) -> pd.DataFrame:
    """Map a raw clinical table to ``subject, idh, codeletion, mgmt, grade`` (float, NaN missing).

    Raises :class:`InputError` (:class:`~fedglioma.errors.InputErrors` for several) naming every unknown
    spelling (subject, file, row, column), an absent ID column or a duplicated subject.
    """
    if mapping.id_column not in table.columns:
        raise InputError(
            f"ID column {mapping.id_column!r} not found (columns: {', '.join(table.columns)})",
            site=site,
            file=file,
            fix=f"set clinical.sites.{site}.id_column (or clinical.default.id_column) in config.yaml",
        )
    problems: list[InputError] = []
    out = pd.DataFrame({"subject": table[mapping.id_column].astype(str).str.strip()})
    for sid in out["subject"][out["subject"].duplicated()].unique().tolist():
        rows = [int(i) + 2 for i in np.flatnonzero(out["subject"] == sid)]
        problems.append(InputError(f"rows {rows}: duplicated subject", site=site, subject=sid, file=file,
                                   fix="keep one row per subject"))
    for task in TASKS:
        col = getattr(mapping.columns, task)
        if not col or col not in table.columns:
            out[task] = np.nan  # the site does not provide this label at all
            continue
        coded = []
        for i, raw in enumerate(table[col].tolist()):
            c = _code(task, raw, mapping)
            if c is None:
                # row numbers as a spreadsheet shows them: header is row 1
                problems.append(InputError(
                    f"row {i + 2}, column {col!r}: unknown value {raw!r} for {task}", site=site,
                    subject=out["subject"].iloc[i], file=file,
                    fix=f"correct the value or add the spelling under clinical.sites.{site}.values.{task} in "
                    "config.yaml"))
                c = float("nan")
            coded.append(c)
        out[task] = np.asarray(coded, dtype=float)
    raise_all(problems)
    return out


def write_labels(labels: pd.DataFrame, path: str | Path) -> None:
    """Write harmonised labels as TSV (empty cell = missing), atomically."""
    from fedglioma.atomic import atomic_path

    df = labels[["subject", *TASKS]].copy()
    for t in TASKS:
        df[t] = df[t].map(lambda v: "" if pd.isna(v) else str(int(v)))
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def read_labels(path: str | Path) -> pd.DataFrame:
    """Read a harmonised ``labels.tsv`` (missing as NaN)."""
    df = pd.read_csv(path, sep="\t", dtype={"subject": str})
    for t in TASKS:
        df[t] = pd.to_numeric(df[t], errors="raise").astype(float)
    return df


def cohort_summary(labels: pd.DataFrame, *, site: str, role: str | None) -> dict[str, Any]:
    """A site's cohort in aggregate numbers (no subject IDs): what ``results/sites/{site}/summary.json`` holds and
    the report's cohort table is formatted from (:func:`fedglioma.report.cohort.cohort_table`).

    Keys: ``site``, ``role``, ``n`` (subjects); per task ``{task}_n`` (known labels) and ``{task}_missing``; per
    binary task ``{task}_positive`` (label 1); for the grade ``grade2``, ``grade3``, ``grade4``.
    """
    out: dict[str, Any] = {"site": site, "role": role, "n": len(labels)}
    for t in TASKS:
        col = labels[t]
        known = col.dropna()
        out[f"{t}_n"] = int(known.size)
        out[f"{t}_missing"] = int(col.isna().sum())
        if t == "grade":
            for g in GRADES:
                out[f"grade{g}"] = int((known == g).sum())
        else:
            out[f"{t}_positive"] = int((known == 1).sum())
    return out


def site_labels(
    subjects: list[str],
    clinical: str | Path | None,
    mapping: ClinicalMapping,
    *,
    site: str,
) -> pd.DataFrame:
    """Harmonised labels for exactly ``subjects`` (missing rows -> all labels missing).

    A clinical row whose subject has no images is an error (a typo in an ID would
    otherwise silently drop that subject's labels).
    """
    if clinical:
        labels = harmonise(read_table(clinical, site=site), mapping, site=site, file=clinical)
        orphans = sorted(set(labels["subject"]) - set(subjects))
        if orphans:
            raise InputError(
                f"subjects {orphans} are listed in the clinical table but have no images",
                site=site,
                file=clinical,
                fix="add their images, fix the IDs, or remove the rows",
            )
    else:
        labels = pd.DataFrame(columns=["subject", *TASKS])
    base = pd.DataFrame({"subject": subjects})
    return base.merge(labels, on="subject", how="left")[["subject", *TASKS]]


def write_site_labels(row: Any, clinical_cfg: Mapping[str, Any] | None, out: str | Path,
                      layout_options: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Discover a site's subjects and write its harmonised ``labels.tsv``."""
    from fedglioma.io.layouts import discover

    found = discover(row.path, row.layout, row.site, **dict(layout_options or {}))
    labels = site_labels([s.subject for s in found.subjects], row.clinical or None,
                         site_mapping(clinical_cfg, row.site), site=row.site)
    write_labels(labels, out)
    return labels


def harmonise_site(row: Any, labels: str, summary: str, *, clinical_cfg: Mapping[str, Any],
                   layouts_cfg: Mapping[str, Any]) -> None:
    """Rule ``labels`` / ``fedglioma cohort labels``: the site's harmonised ``labels`` table (stays at the site)
    and its aggregated cohort ``summary`` (JSON, no subject IDs: it goes into the report).

    Args:
        row: the site's ``sites.tsv`` row (its clinical table and layout).
        labels: ``labels.tsv`` to write.
        summary: ``summary.json`` to write.
        clinical_cfg: the config's ``clinical`` section (each site's column mapping).
        layouts_cfg: the config's ``layouts`` section.
    """
    from fedglioma.atomic import write_json
    from fedglioma.config import layout_options

    table = write_site_labels(row, clinical_cfg, labels, layout_options(row, layouts_cfg))
    write_json(summary, cohort_summary(table, site=row.site, role=row.role))
