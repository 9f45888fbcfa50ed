"""Reading the small files steps exchange (JSON documents, TSV tables) and ``NAME=PATH`` arguments, naming the
file on failure. Writing goes through :mod:`fedglioma.atomic` (``write_json``: strict JSON, atomic)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedglioma.errors import ConfigError, InputError

if TYPE_CHECKING:  # pandas loads with the first table: the command line and the Snakefile read JSON only
    import pandas as pd


def read_tsv(path: str | Path, *, what: str, text: bool = False) -> pd.DataFrame:
    """Read a TSV (subject and site IDs as text; empty cells are missing, or ``""`` with ``text``: every column
    is then read as text)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found", file=p)
    if text:
        return pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
    return pd.read_csv(p, sep="\t", dtype={"subject": str, "site": str}, keep_default_na=True)


def read_json(path: str | Path, *, what: str) -> Any:
    """Read a JSON file, naming it on failure."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found", file=p)
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON ({exc})", file=p) from exc


def parse_pairs(items: list[str] | None, *, flag: str) -> dict[str, Path]:
    """``NAME=PATH`` items -> ``{NAME: Path}`` (names unique)."""
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"{flag} expects NAME=PATH, got {item!r}")
        if name in out:
            raise ConfigError(f"{flag} names {name!r} twice")
        out[name] = Path(path)
    return out


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
