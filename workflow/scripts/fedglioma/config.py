"""Loading and validating ``sites.tsv`` (``config.yaml`` is :mod:`fedglioma.settings`).

The workflow validates the table with Snakemake's ``validate`` and the same schema, shipped inside the package
in ``fedglioma/schemas/`` (:data:`SCHEMA_DIR`); the command line uses :func:`load_sites`, which applies the
schema defaults the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.io.layouts import DEFAULT_NON_TUMOUR_LABELS, DEFAULT_TUMOUR_LABELS

#: The JSON schemas (YAML) of ``sites.tsv`` and (generated, for editors and tools) ``config.yaml``: package data.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def _schema(name: str) -> dict[str, Any]:
    return yaml.safe_load((SCHEMA_DIR / name).read_text())


def _fill_defaults(obj: dict[str, Any], schema: Mapping[str, Any]) -> None:
    for key, sub in (schema.get("properties") or {}).items():
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if isinstance(obj.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(obj[key], sub)


def validate(obj: dict[str, Any], schema_name: str, *, what: str) -> dict[str, Any]:
    """Fill schema defaults into a copy of ``obj`` and validate it; raise :class:`ConfigError`."""
    schema = _schema(schema_name)
    out = copy.deepcopy(obj)
    _fill_defaults(out, schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(out), key=lambda e: list(e.path))
    if errors:
        msgs = [f"{what}: {'/'.join(map(str, e.path)) or '(top)'}: {e.message}" for e in errors]
        raise ConfigError("\n".join(msgs))
    return out


@dataclass(frozen=True)
class SiteRow:
    """One validated row of ``sites.tsv``."""

    site: str
    role: str
    layout: str
    path: str
    clinical: str
    tumour_labels: tuple[int, ...]
    skull_stripped: bool
    space: str
    slurm_partition: str
    slurm_account: str
    coregistered: bool = False
    non_tumour_labels: tuple[int, ...] = ()

    @property
    def is_external(self) -> bool:
        return self.role == "external"

    @property
    def declared(self) -> Declared:
        """What the site declares was already done to its images (skull stripping, co-registration, space)."""
        return Declared(skull_stripped=self.skull_stripped, coregistered=self.coregistered, space=self.space)


def site_row(rec: Mapping[str, Any]) -> SiteRow:
    """Build a :class:`SiteRow` from a validated record (schema defaults applied)."""
    labels = str(rec.get("tumour_labels") or "").strip()
    tumour = tuple(int(v) for v in labels.split(",")) if labels else DEFAULT_TUMOUR_LABELS[rec["layout"]]
    return SiteRow(
        site=rec["site"],
        role=rec["role"],
        layout=rec["layout"],
        path=rec["path"],
        clinical=rec.get("clinical") or "",
        tumour_labels=tumour,
        skull_stripped=rec["skull_stripped"] == "yes",
        space=rec["space"],
        slurm_partition=rec.get("slurm_partition") or "",
        slurm_account=rec.get("slurm_account") or "",
        coregistered=rec.get("coregistered", "no") == "yes",
        non_tumour_labels=_labels(rec.get("non_tumour_labels"), DEFAULT_NON_TUMOUR_LABELS.get(rec["layout"], ())),
    )


def _labels(text: Any, default: tuple[int, ...]) -> tuple[int, ...]:
    text = str(text or "").strip()
    if text == "none":
        return ()
    return tuple(int(v) for v in text.split(",")) if text else default


def read_sites_table(path: str | Path) -> pd.DataFrame:
    """Read ``sites.tsv`` as strings (empty cells as empty strings)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sites table not found: {p}")
    df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False, comment="#")
    return df


def check_site_table(rows: list[SiteRow], *, file: str | Path) -> None:
    """Cross-row rules: unique IDs; a study has at least one training site and exactly one external site; a table
    of ``predict`` sites only needs neither."""
    ids = [r.site for r in rows]
    dups = sorted({s for s in ids if ids.count(s) > 1})
    if dups:
        raise InputError(f"duplicated site IDs {dups}", file=file, fix="give every site a unique ID")
    n_ext = sum(r.is_external for r in rows)
    n_train = sum(r.role == "train" for r in rows)
    if n_train == 0 and any(r.role == "predict" for r in rows):
        if n_ext:
            raise InputError("an external site without training sites", file=file,
                             fix="a table of predict sites only predicts with a bundle; add the training sites or "
                             "drop the external row")
        return  # prediction only, with a bundle from elsewhere
    if n_ext != 1:
        raise InputError(f"{n_ext} external sites; exactly one is required", file=file, fix="set role=external on one row")
    if n_train == 0:
        raise InputError("no training site", file=file, fix="set role=train on the training sites")


def load_sites(path: str | Path) -> list[SiteRow]:
    """Read, validate and check ``sites.tsv``."""
    df = read_sites_table(path)
    rows = []
    for i, rec in enumerate(df.to_dict(orient="records")):
        rec = {k: v for k, v in rec.items() if v != "" or k == "path"}
        rows.append(site_row(validate(rec, "sites.schema.yaml", what=f"{path} row {i + 2}")))
    check_site_table(rows, file=path)
    return rows


def layout_options(row: SiteRow, layouts_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Options of site ``row``'s layout from the config's ``layouts`` section (the nnU-Net channel order)."""
    if row.layout == "nnunet":
        return {"channels": tuple(layouts_cfg["nnunet"]["channels"])}
    return {}
