"""Loading and validating ``sites.tsv`` (``config.yaml`` is :mod:`fedglioma.settings`).

The schema ``schemas/sites.schema.yaml`` (package data, :data:`SCHEMA_DIR`) defines the table's columns, their
values and defaults; :func:`load_sites` (the workflow's ``common.smk`` and every command) validates every row
against it and lists every problem of every row at once, each with its row, column, site and fix.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from fedglioma.declared import Declared
from fedglioma.errors import InputError, raise_all
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
        raise InputError("sites table not found", file=p, fix="check the `sites` key of config.yaml (or --sites)")
    try:
        return pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False, comment="#", encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot be read as a tab-separated table ({exc})", file=p,
                         fix="save it as UTF-8 text, tab-separated, one row per site") from exc


def _schema_fix(error: jsonschema.ValidationError, schema: Mapping[str, Any]) -> str:
    """What to do about one schema error of a ``sites.tsv`` row, from the schema itself (choices, descriptions)."""
    column = str(error.path[0]) if error.path else ""
    prop = (schema.get("properties") or {}).get(column, {})
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"add the column(s) {', '.join(missing)} and fill them in"
    if error.validator == "enum":
        return f"use one of {', '.join(map(str, error.validator_value))} in the {column} column"
    return f"correct the {column} column: {prop.get('description', '')}".rstrip(": ")


def site_table_problems(df: pd.DataFrame, *, file: str | Path) -> tuple[list[SiteRow], list[InputError]]:
    """Every row of a ``sites.tsv`` table validated against ``schemas/sites.schema.yaml`` (defaults applied), and
    the cross-row rules (:func:`check_site_table`): the rows that are valid and every problem, each naming the
    row, column, site (where the row's ID is valid) and fix."""
    import difflib

    schema = _schema("sites.schema.yaml")
    known = list(schema.get("properties") or {})
    problems: list[InputError] = []
    unknown = [c for c in df.columns if c not in known]
    for col in unknown:
        close = difflib.get_close_matches(str(col), known, n=1, cutoff=0.6)
        problems.append(InputError(f"unknown column {col!r}", file=file,
                                   fix=(f"rename it to {close[0]}" if close else "remove it") +
                                   f" (the columns are {', '.join(known)})"))
    validator = jsonschema.Draft202012Validator(schema)
    id_rx = re.compile(str(schema["properties"]["site"]["pattern"]))
    rows: list[SiteRow] = []
    for i, rec in enumerate(df.drop(columns=unknown).to_dict(orient="records")):
        rec = {k: v for k, v in rec.items() if v != "" or k == "path"}
        _fill_defaults(rec, schema)
        site = str(rec.get("site", ""))
        errors = sorted(validator.iter_errors(rec), key=lambda e: list(e.path))
        for e in errors:
            column = f", column {e.path[0]}" if e.path else ""
            problems.append(InputError(f"row {i + 2}{column}: {e.message}", site=site if id_rx.match(site) else None,
                                       file=file, fix=_schema_fix(e, schema)))
        if not errors:
            rows.append(site_row(rec))
    if not problems:
        problems.extend(site_table_rule_problems(rows, file=file))
    return rows, problems


def site_table_rule_problems(rows: list[SiteRow], *, file: str | Path) -> list[InputError]:
    """Cross-row rules, every broken one: unique IDs (also after case folding: site folders and file names must
    not differ in case only); a study has at least one training site and exactly one external site; a table of
    ``predict`` sites only needs neither."""
    problems: list[InputError] = []
    groups: dict[str, list[str]] = {}
    for r in rows:
        groups.setdefault(r.site.casefold(), []).append(r.site)
    for ids in groups.values():
        if len(ids) > 1:
            how = "duplicated" if len(set(ids)) == 1 else "equal after case folding"
            problems.append(InputError(f"site IDs {ids} are {how}", file=file,
                                       fix="give every site a unique ID (not only differing in case)"))
    external = [r.site for r in rows if r.is_external]
    n_ext = len(external)
    n_train = sum(r.role == "train" for r in rows)
    if n_train == 0 and any(r.role == "predict" for r in rows):
        if n_ext:
            problems.append(InputError("an external site without training sites", site=external[0], file=file,
                                       fix="a table of predict sites only predicts with a bundle; add the training "
                                       "sites or drop the external row"))
        return problems  # prediction only, with a bundle from elsewhere
    if n_ext != 1:
        named = f" ({', '.join(f'site {s}' for s in external)})" if external else ""
        problems.append(InputError(f"{n_ext} external sites{named}; exactly one is required", file=file,
                                   fix="set role=external on one row" + (" and role=train on the others"
                                                                        if n_ext > 1 else "")))
    if n_train == 0:
        problems.append(InputError("no training site", file=file, fix="set role=train on the training sites"))
    return problems


def check_site_table(rows: list[SiteRow], *, file: str | Path) -> None:
    """Raise every broken cross-row rule of :func:`site_table_rule_problems` at once."""
    raise_all(site_table_rule_problems(rows, file=file))


def load_sites(path: str | Path) -> list[SiteRow]:
    """Read, validate and check ``sites.tsv``: every problem of every row at once (:class:`InputErrors`)."""
    rows, problems = site_table_problems(read_sites_table(path), file=path)
    raise_all(problems)
    return rows


def layout_options(row: SiteRow, layouts_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Options of site ``row``'s layout from the config's ``layouts`` section (the nnU-Net channel order)."""
    if row.layout == "nnunet":
        return {"channels": tuple(layouts_cfg["nnunet"]["channels"])}
    return {}
