"""Loading and validating ``config.yaml`` and ``sites.tsv`` outside Snakemake.

The workflow validates with Snakemake's ``validate`` (same schemas, shipped inside the package in
``fedglioma/schemas/``, :data:`SCHEMA_DIR`); the command line uses :func:`load_config` and
:func:`load_sites`, which apply the schema defaults the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import yaml

from fedglioma.declared import Declared
from fedglioma.errors import ConfigError, InputError
from fedglioma.io.layouts import DEFAULT_NON_TUMOUR_LABELS, DEFAULT_TUMOUR_LABELS

#: The JSON schemas (YAML) of ``config.yaml`` and ``sites.tsv``: package data, so a non-editable install has them.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def _schema(name: str) -> dict[str, Any]:
    return yaml.safe_load((SCHEMA_DIR / name).read_text())


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` itself, or the definition its local ``$ref`` (``#/$defs/...``) points to."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return _resolve(node, root)


def _fill_defaults(obj: dict[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> None:
    """Fill ``default`` values in place, as Snakemake's ``validate(set_default=True)`` does: in named properties
    and in the values of maps whose ``additionalProperties`` is a schema (e.g. ``clinical.sites.<site>``)."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    props = schema.get("properties") or {}
    for key, sub in props.items():
        sub = _resolve(sub, root)
        if key not in obj and "default" in sub:
            obj[key] = copy.deepcopy(sub["default"])
        if isinstance(obj.get(key), dict):
            _fill_defaults(obj[key], sub, root)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in obj.items():
            if key not in props and isinstance(value, dict):
                _fill_defaults(value, extra, root)


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


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of ``config`` with ``KEY=VALUE`` overrides (``KEY`` a dotted path such as ``train.epochs_per_round``,
    ``VALUE`` read as YAML) applied."""
    out = copy.deepcopy(dict(config))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs_per_round=2), got {item!r}")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item}: {part} is not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from exc
    return out


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Read ``config.yaml``, apply ``--set`` ``overrides`` and validate (defaults filled in)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    raw = apply_overrides(yaml.safe_load(p.read_text()) or {}, overrides)
    return validate(raw, "config.schema.yaml", what=str(p) + (" with --set " + " ".join(overrides) if overrides else ""))


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
    """Cross-row rules: unique IDs, exactly one external site, at least one training site."""
    ids = [r.site for r in rows]
    dups = sorted({s for s in ids if ids.count(s) > 1})
    if dups:
        raise InputError(f"duplicated site IDs {dups}", file=file, fix="give every site a unique ID")
    n_ext = sum(r.is_external for r in rows)
    if n_ext != 1:
        raise InputError(f"{n_ext} external sites; exactly one is required", file=file, fix="set role=external on one row")
    if not any(r.role == "train" for r in rows):
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
