"""Clinical tables of the synthetic sites, each in the column names and spellings of the dataset it mirrors.

A style fixes the file name (``.csv`` or ``.tsv``), the ID column, the column of each label and how
each value is spelled, including how a missing value looks (empty, ``NA``, ``indeterminate``,
``n.d.``, ...) and whether 1p/19q is recorded (as intact) for IDH-wildtype tumours. The matching
harmonisation is in ``config/config.yaml`` under ``clinical.sites.<site>`` (tested).

The tables are *styled after* the public datasets' metadata (column names, typical spellings); they
are synthetic and carry no information about real patients.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedglioma.synth.labels import LABEL_COLUMNS, Labels, format_grade

#: A spelling: a fixed string, alternatives (one drawn per subject), or ``f(rng) -> str``.
Spelling = str | tuple[str, ...] | Callable[[np.random.Generator], str]


@dataclass(frozen=True)
class ClinicalStyle:
    """How one dataset writes its clinical table.

    Attributes:
        filename: file name in the site folder (``.csv`` comma-separated, else tab-separated).
        id_column: header of the subject-ID column.
        columns: label (``IDH``, ``1p19q``, ``MGMT``, ``grade``) -> header; a label without a column is
            never recorded by the dataset.
        spell: label -> {value -> spelling}; values 1/0 (IDH mutant, 1p/19q codeleted, MGMT methylated),
            grades 2/3/4 default to the site's ``grade_style``.
        missing: label -> spelling of a missing value (default empty).
        wildtype_1p19q_intact: 1p/19q of IDH-wildtype tumours is recorded as intact (else missing).
        extra: headers of descriptive columns (age, sex, diagnosis, ...) after the ID column.
        mapping: the ``clinical.sites.<site>`` entry of ``config.yaml`` that harmonises the table.
    """

    filename: str
    id_column: str
    columns: dict[str, str]
    spell: dict[str, dict[int, Spelling]] = field(default_factory=dict)
    missing: dict[str, Spelling] = field(default_factory=dict)
    wildtype_1p19q_intact: bool = False
    extra: tuple[str, ...] = ()
    mapping: dict = field(default_factory=dict)

    @property
    def header(self) -> list[str]:
        """Column headers in file order."""
        return [self.id_column, *self.extra, *(self.columns[k] for k in LABEL_COLUMNS if k in self.columns)]

    @property
    def separator(self) -> str:
        return "," if self.filename.endswith(".csv") else "\t"


def _draw(spelling: Spelling, rng: np.random.Generator) -> str:
    if isinstance(spelling, str):
        return spelling
    if isinstance(spelling, tuple):
        return spelling[int(rng.integers(len(spelling)))]
    return spelling(rng)


def _age(rng: np.random.Generator) -> str:
    return str(int(np.clip(round(rng.normal(54.0, 14.0)), 18, 89)))


def _sex(rng: np.random.Generator) -> str:
    return "F" if rng.random() < 0.42 else "M"


def _diagnosis_2021(lab: Labels) -> str:
    """WHO CNS 2021 integrated diagnosis (text; not a label column)."""
    if lab.idh == 0:
        return "Glioblastoma, IDH-wildtype" if lab.grade == 4 else "Diffuse astrocytic glioma, IDH-wildtype"
    if lab.codeletion:
        return "Oligodendroglioma, IDH-mutant, 1p/19q-codeleted"
    return "Astrocytoma, IDH-mutant"


def _diagnosis_2016(lab: Labels) -> str:
    """WHO 2016 diagnosis (text; not a label column)."""
    if lab.idh and lab.codeletion:
        prefix = "Anaplastic o" if lab.grade == 3 else "O"
        return f"{prefix}ligodendroglioma, IDH-mutant and 1p/19q-codeleted"
    status = "IDH-mutant" if lab.idh else "IDH-wildtype"
    kind = {2: "Diffuse astrocytoma", 3: "Anaplastic astrocytoma", 4: "Glioblastoma"}[lab.grade]
    return f"{kind}, {status}"


#: The styles; ``plain`` is the generator's own (subject, IDH, 1p19q, MGMT, grade).
STYLES: dict[str, ClinicalStyle] = {
    "plain": ClinicalStyle(
        filename="clinical.tsv",
        id_column="subject",
        columns={"IDH": "IDH", "1p19q": "1p19q", "MGMT": "MGMT", "grade": "grade"},
        spell={
            "IDH": {1: "mutant", 0: "wildtype"},
            "1p19q": {1: "codeleted", 0: "intact"},
            "MGMT": {1: "methylated", 0: "unmethylated"},
        },
    ),
    # BraTS 2021 with RSNA-MICCAI-style MGMT (0/1): IDH-mutant / IDH-wildtype, arabic grades
    "brats2021": ClinicalStyle(
        filename="BraTS2021_clinical.csv",
        id_column="BraTS21ID",
        extra=("Age", "Sex"),
        columns={"IDH": "IDH_status", "1p19q": "1p19q_status", "MGMT": "MGMT_value", "grade": "WHO_grade"},
        spell={
            "IDH": {1: "IDH-mutant", 0: "IDH-wildtype"},
            "1p19q": {1: "codeleted", 0: "non-codeleted"},
            "MGMT": {1: "1", 0: "0"},
        },
        mapping={"id_column": "BraTS21ID", "columns": {"idh": "IDH_status", "codeletion": "1p19q_status",
                                                       "mgmt": "MGMT_value", "grade": "WHO_grade"}},
    ),
    # BraTS 2023 glioma: WHO CNS 2021 spellings ("CNS WHO grade 4"), 1p/19q "intact" also for IDH-wildtype
    "brats2023": ClinicalStyle(
        filename="BraTS2023_GLI_clinical.tsv",
        id_column="BraTS_ID",
        extra=("age_at_diagnosis", "sex"),
        columns={"IDH": "IDH", "1p19q": "1p19q", "MGMT": "MGMT", "grade": "CNS5_grade"},
        spell={
            "IDH": {1: "mutant", 0: "wildtype"},
            "1p19q": {1: "codeleted", 0: "intact"},
            "MGMT": {1: "methylated", 0: "unmethylated"},
        },
        missing={"IDH": "NA", "1p19q": "NA", "MGMT": "NA", "grade": "NA"},
        wildtype_1p19q_intact=True,
        mapping={"id_column": "BraTS_ID", "columns": {"idh": "IDH", "codeletion": "1p19q", "mgmt": "MGMT",
                                                      "grade": "CNS5_grade"}},
    ),
    # UCSF-PDGM metadata: IDH variants, "co-deletion", MGMT status positive/negative/indeterminate (+ index)
    "ucsf_pdgm": ClinicalStyle(
        filename="UCSF-PDGM-metadata_v2.csv",
        id_column="ID",
        extra=("Sex", "Age at MRI", "Final pathologic diagnosis (WHO 2021)", "MGMT index"),
        columns={"IDH": "IDH", "1p19q": "1p/19q", "MGMT": "MGMT status", "grade": "WHO CNS Grade"},
        spell={
            "IDH": {1: ("IDH1 p.R132H", "IDH1 p.R132H", "IDH1 p.R132C", "IDH2 p.R172K", "mutated (NOS)"), 0: "wildtype"},
            "1p19q": {1: "co-deletion", 0: "intact"},
            "MGMT": {1: "positive", 0: "negative"},
        },
        missing={"MGMT": "indeterminate"},
        wildtype_1p19q_intact=True,
        mapping={
            "id_column": "ID",
            "columns": {"idh": "IDH", "codeletion": "1p/19q", "mgmt": "MGMT status", "grade": "WHO CNS Grade"},
            "values": {
                "idh": {"IDH1 p.R132H": "mutant", "IDH1 p.R132C": "mutant", "IDH2 p.R172K": "mutant",
                        "mutated (NOS)": "mutant"},
                "codeletion": {"co-deletion": "codeleted"},
            },
        },
    ),
    # UPENN-GBM clinical info: IDH1 and MGMT only (a glioblastoma cohort: no grade, no 1p/19q column)
    "upenn_gbm": ClinicalStyle(
        filename="UPENN-GBM_clinical_info_v2.1.csv",
        id_column="ID",
        extra=("Gender", "Age_at_scan_years"),
        columns={"IDH": "IDH1", "MGMT": "MGMT"},
        spell={"IDH": {1: "Mutated", 0: "Wildtype"}, "MGMT": {1: "Methylated", 0: "Unmethylated"}},
        missing={"IDH": "NOS/NEC", "MGMT": ("Not Available", "Indeterminate")},
        mapping={"id_column": "ID", "columns": {"idh": "IDH1", "mgmt": "MGMT"}, "values": {"idh": {"NOS/NEC": ""}}},
    ),
    # EGD: WHO 2016 roman grades, "co-deleted" / "not co-deleted"
    "egd": ClinicalStyle(
        filename="EGD_clinical.csv",
        id_column="Subject",
        extra=("Sex", "Age"),
        columns={"IDH": "IDH", "1p19q": "1p19q", "MGMT": "MGMT", "grade": "Grade"},
        spell={
            "IDH": {1: "mutated", 0: "wildtype"},
            "1p19q": {1: "co-deleted", 0: "not co-deleted"},
            "MGMT": {1: "methylated", 0: "unmethylated"},
        },
        missing={"IDH": "unknown", "1p19q": "unknown", "MGMT": "unknown", "grade": "unknown"},
        mapping={
            "id_column": "Subject",
            "columns": {"idh": "IDH", "codeletion": "1p19q", "mgmt": "MGMT", "grade": "Grade"},
            "values": {"codeletion": {"not co-deleted": "intact"}},
        },
    ),
    # hospital pathology export: MGMT as pyrosequencing mean methylation (%) with a 10 % cut-off, "n.d."
    "hospital": ClinicalStyle(
        filename="pathology_export.csv",
        id_column="Patient ID",
        extra=("Diagnosis",),
        columns={
            "IDH": "IDH1/2",
            "1p19q": "1p/19q (FISH)",
            "MGMT": "MGMT promoter methylation (%)",
            "grade": "WHO grade (2016)",
        },
        spell={
            "IDH": {1: ("IDH1 R132H mut", "IDH1 R132H mut", "IDH2 mut"), 0: "wild type"},
            "1p19q": {1: "deleted", 0: "not deleted"},
            "MGMT": {1: lambda rng: f"{rng.uniform(12.0, 65.0):.1f}", 0: lambda rng: f"{rng.uniform(1.0, 8.5):.1f}"},
        },
        missing={"IDH": "n.d.", "1p19q": "n.d.", "MGMT": "n.d.", "grade": "n.d."},
        mapping={
            "id_column": "Patient ID",
            "columns": {"idh": "IDH1/2", "codeletion": "1p/19q (FISH)", "mgmt": "MGMT promoter methylation (%)",
                        "grade": "WHO grade (2016)"},
            "values": {"idh": {"IDH1 R132H mut": "mutant", "IDH2 mut": "mutant"},
                       "codeletion": {"not deleted": "intact"}},
            "thresholds": {"mgmt": 10.0},
        },
    ),
}


def _label_value(labels: Labels, key: str) -> int | None:
    return {"IDH": labels.idh, "1p19q": labels.codeletion, "MGMT": labels.mgmt, "grade": labels.grade}[key]


_TASK = {"IDH": "idh", "1p19q": "codeletion", "MGMT": "mgmt", "grade": "grade"}


def clinical_record(
    style_name: str,
    subject: str,
    labels: Labels,
    *,
    grade_style: str,
    missing_labels: tuple[str, ...],
    missing: Mapping[str, bool],
    rng: np.random.Generator,
) -> tuple[dict[str, str], dict[str, float | None]]:
    """One subject's clinical row in ``style_name`` and what it records.

    Returns ``(cells, recorded)``: header -> cell text, and task (``idh``, ``codeletion``, ``mgmt``,
    ``grade``) -> the value a correct harmonisation yields (None = missing). ``missing`` marks cells
    lost at random; ``missing_labels`` are never recorded. Draws from ``rng`` in a fixed order.
    """
    style = STYLES[style_name]
    cells: dict[str, str] = {style.id_column: subject}
    for col in style.extra:
        if col in ("Age", "Age at MRI", "Age_at_scan_years", "age_at_diagnosis"):
            cells[col] = _age(rng)
        elif col in ("Sex", "Gender", "sex"):
            cells[col] = _sex(rng)
        elif col == "Final pathologic diagnosis (WHO 2021)":
            cells[col] = _diagnosis_2021(labels)
        elif col == "Diagnosis":
            cells[col] = _diagnosis_2016(labels)
        elif col == "MGMT index":  # methylated CpG sites (of 17); empty when MGMT was not tested
            m = missing.get("MGMT", False) or "MGMT" in missing_labels
            cells[col] = "" if m else str(int(rng.integers(3, 18)) if labels.mgmt else int(rng.integers(0, 2)))
        else:
            raise ValueError(f"no generator for clinical column {col!r}")
    recorded: dict[str, float | None] = {t: None for t in _TASK.values()}
    for key in LABEL_COLUMNS:
        if key not in style.columns:
            continue
        col = style.columns[key]
        value = _label_value(labels, key)
        if key == "1p19q" and value is None and style.wildtype_1p19q_intact:
            value = 0
        if value is None or key in missing_labels or missing.get(key, False):
            cells[col] = _draw(style.missing.get(key, ""), rng)
            continue
        if key == "grade":
            cells[col] = format_grade(int(value), grade_style)
        else:
            cells[col] = _draw(style.spell[key][int(value)], rng)
        recorded[_TASK[key]] = float(value)
    return cells, recorded


def table_text(style_name: str, rows: list[dict[str, str]]) -> str:
    """The table file's text (header + rows, ``\\n`` line ends; CSV quoted where needed)."""
    style = STYLES[style_name]
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=style.separator, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(style.header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in style.header])
    return buf.getvalue()
