"""Molecular and histological labels of synthetic subjects, and their clinical-table spelling.

Dependencies follow the WHO CNS 2021 logic: 1p/19q codeletion only occurs in
IDH-mutant tumours (oligodendroglioma, grade 2 or 3); grade 4 is mostly
IDH-wildtype (glioblastoma), and MGMT promoter methylation is more frequent in
IDH-mutant tumours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedglioma.errors import ConfigError

#: Default label prevalence; a site's ``SiteSpec.prevalence`` overrides any key.
DEFAULT_PREVALENCE: dict[str, float] = {
    "idh_mutant": 0.35,  # P(IDH mutant)
    "codeleted_if_mutant": 0.40,  # P(1p/19q codeleted | IDH mutant)
    "grade4_if_wildtype": 0.85,  # P(grade 4 | IDH wildtype); the rest grade 3 (2/3) or 2 (1/3)
    "grade4_if_mutant": 0.20,  # P(grade 4 | IDH mutant, intact); the rest grade 2 or 3 (half each)
    "grade3_if_codeleted": 0.40,  # P(grade 3 | codeleted); the rest grade 2
    "methylated_if_mutant": 0.85,  # P(MGMT methylated | IDH mutant)
    "methylated_if_wildtype": 0.40,  # P(MGMT methylated | IDH wildtype)
}

#: The labels a clinical table records (``fedglioma.synth.clinical`` names their columns per dataset).
LABEL_COLUMNS: tuple[str, ...] = ("IDH", "1p19q", "MGMT", "grade")

_ROMAN = {2: "II", 3: "III", 4: "IV"}
#: Grade spellings a site may use (all parsed by ``fedglioma.io.clinical.parse_grade``).
GRADE_STYLES: dict[str, str] = {
    "arabic": "4",
    "roman": "IV",
    "who": "WHO grade 4",
    "who_roman": "WHO grade IV",
    "g": "G4",
    "cns_who": "CNS WHO grade 4",
}


@dataclass(frozen=True)
class Labels:
    """True labels of one subject: idh 1 = mutant, codeletion 1 = codeleted (None if IDH-wildtype:
    not applicable), mgmt 1 = methylated, grade WHO 2/3/4."""

    idh: int
    codeletion: int | None
    mgmt: int
    grade: int

    def as_dict(self) -> dict[str, int | None]:
        """``{"idh", "codeletion", "mgmt", "grade"}`` (the names of ``fedglioma.constants.TASKS``)."""
        return {"idh": self.idh, "codeletion": self.codeletion, "mgmt": self.mgmt, "grade": self.grade}


def check_prevalence(prevalence: Mapping[str, float], where: str = "prevalence") -> dict[str, float]:
    """Defaults overridden by ``prevalence``; unknown keys or values outside [0, 1] raise ConfigError."""
    unknown = sorted(set(prevalence) - set(DEFAULT_PREVALENCE))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(DEFAULT_PREVALENCE)}")
    out = dict(DEFAULT_PREVALENCE)
    for key, value in prevalence.items():
        v = float(value)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            raise ConfigError(f"{where}: {key}={value!r} must be a probability in [0, 1]")
        out[key] = v
    return out


def stratified_uniforms(rng: np.random.Generator, index: int) -> tuple[float, float]:
    """Two uniforms for subject ``index`` of a site from a Kronecker (golden-ratio, sqrt 2) sequence with
    random offsets drawn from the site's ``rng``: any run of subjects covers [0, 1) evenly, so even a
    6-subject site gets close to its label prevalence (both IDH classes, both grade groups), and
    subject ``index`` does not depend on how many subjects the site has."""
    offset = rng.random(2)
    alpha = np.array([(math.sqrt(5.0) - 1.0) / 2.0, math.sqrt(2.0) - 1.0])
    u = np.mod(offset + index * alpha, 1.0)
    return float(u[0]), float(u[1])


def sample_labels(
    rng: np.random.Generator,
    prevalence: Mapping[str, float] | None = None,
    stratified: tuple[float, float] | None = None,
) -> Labels:
    """Draw one subject's labels (always 4 uniform draws, so streams stay aligned across label outcomes).

    ``stratified``: uniforms to use for the IDH and the grade draw instead of ``rng``'s
    (see :func:`stratified_uniforms`).
    """
    p = check_prevalence(prevalence or {})
    u = rng.random(4)
    if stratified is not None:
        u[0], u[2] = stratified
    idh = int(u[0] < p["idh_mutant"])
    if idh:
        codel: int | None = int(u[1] < p["codeleted_if_mutant"])
        if codel:
            grade = 3 if u[2] < p["grade3_if_codeleted"] else 2
        else:
            g4 = p["grade4_if_mutant"]
            grade = 4 if u[2] < g4 else (2 if u[2] < g4 + (1.0 - g4) / 2.0 else 3)
        mgmt = int(u[3] < p["methylated_if_mutant"])
    else:
        codel = None
        g4 = p["grade4_if_wildtype"]
        grade = 4 if u[2] < g4 else (3 if u[2] < g4 + (1.0 - g4) * 2.0 / 3.0 else 2)
        mgmt = int(u[3] < p["methylated_if_wildtype"])
    return Labels(idh=idh, codeletion=codel, mgmt=mgmt, grade=grade)


def format_grade(grade: int, style: str) -> str:
    """Spell a WHO grade in one of :data:`GRADE_STYLES`."""
    if style == "arabic":
        return str(grade)
    if style == "roman":
        return _ROMAN[grade]
    if style == "who":
        return f"WHO grade {grade}"
    if style == "who_roman":
        return f"WHO grade {_ROMAN[grade]}"
    if style == "g":
        return f"G{grade}"
    if style == "cns_who":
        return f"CNS WHO grade {grade}"
    raise ConfigError(f"unknown grade style {style!r}; known: {sorted(GRADE_STYLES)}")
