"""Exchange format: safetensors parameter files with a JSON sidecar, and the server-side update checks.

A parameter file ``X.safetensors`` always travels with ``X.json`` (the sidecar): round, site, n_train, metrics,
``sha256`` of the parameter file, and the kind of file (``global``, ``update``, ``local``, ``server_state``).
Both are written atomically (parameters first, then the sidecar; the fault point
``save_params/{kind}[/{site}]/round-{r}/before-sidecar`` lies between the two). Nothing is ever unpickled: tensors
are read with ``safetensors`` and sidecars with ``json``.

The safetensors header holds a single metadata entry (``fedglioma``: sorted JSON). One entry only, because
safetensors does not keep the order of several metadata keys, and the file bytes (hence its sha256) must be
reproducible.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedglioma.atomic import atomic_path, dumps, jsonable, write_json
from fedglioma.constants import ID_PATTERN
from fedglioma.errors import InputError, UpdateRejected
from fedglioma.faults import fault_point
from fedglioma.io.files import sha256_file

FORMAT = "fedglioma-params"
FORMAT_VERSION = 1
#: safetensors dtype names of the float dtypes the exchange accepts.
DTYPES: dict[str, torch.dtype] = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

#: ``{name: (shape, dtype)}``: what an update must hold exactly.
Spec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


def sidecar_path(path: str | Path) -> Path:
    """The sidecar of a parameter file: ``X.safetensors`` -> ``X.json``."""
    return Path(path).with_suffix(".json")



def spec_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The ``{name: (shape, dtype)}`` spec of a state dict."""
    return {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}


def save_params(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor],
    sidecar: Mapping[str, Any],
    *,
    sidecar_out: str | Path | None = None,
) -> dict[str, Any]:
    """Write ``tensors`` to ``path`` (safetensors) and the sidecar JSON, both atomically.

    Args:
        path: the ``.safetensors`` file.
        tensors: name -> tensor (moved to CPU, made contiguous; an empty mapping gives a valid empty file).
        sidecar: JSON-serialisable metadata (``round``, ``site``, ``kind``, ``n_train``, metrics, ...).
        sidecar_out: sidecar path; default ``path`` with suffix ``.json``.

    Returns:
        the sidecar as written, with ``sha256``, ``file``, ``format``, ``format_version``, ``n_tensors``, ``numel``.
    """
    path = Path(path)
    data = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {k: sidecar[k] for k in ("kind", "round", "site") if k in sidecar}
    meta = {"fedglioma": dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **header}, indent=None)}
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(data, str(tmp), metadata=meta)
    side = jsonable(dict(sidecar))
    side.update(
        sha256=sha256_file(path),
        file=path.name,
        format=FORMAT,
        format_version=FORMAT_VERSION,
        n_tensors=len(data),
        numel=int(sum(v.numel() for v in data.values())),
    )
    where = "/".join(str(x) for x in (sidecar.get("kind", "params"), sidecar.get("site"), sidecar.get("baseline"))
                     if x is not None)
    fault_point(f"save_params/{where}/round-{sidecar.get('round')}/before-sidecar")  # parameters renamed, sidecar not
    write_json(sidecar_out if sidecar_out is not None else sidecar_path(path), side)
    return side


def read_sidecar(path: str | Path, sidecar_in: str | Path | None = None, *, verify: bool = True) -> dict[str, Any]:
    """Read the sidecar of ``path`` and, when ``verify``, check the file's sha256 against it.

    Raises:
        InputError: missing or broken sidecar, or sha256 mismatch.
    """
    path = Path(path)
    side_p = Path(sidecar_in) if sidecar_in is not None else sidecar_path(path)
    try:
        side = json.loads(side_p.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"sidecar unreadable ({exc})", file=side_p, fix="re-create the parameter file") from exc
    if not isinstance(side, dict):
        raise InputError("sidecar is not a JSON object", file=side_p, fix="re-create the parameter file")
    if verify:
        if not path.is_file():
            raise InputError("parameter file not found", file=path)
        if side.get("sha256") != sha256_file(path):
            raise InputError("sha256 differs from its sidecar (corrupt or replaced file)", file=path)
    return side


def load_params(
    path: str | Path, sidecar_in: str | Path | None = None, *, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a parameter file (no unpickling) and its sidecar, verifying the sha256.

    Returns:
        ``(tensors, sidecar)``.

    Raises:
        InputError: missing/broken sidecar, sha256 mismatch, unreadable safetensors.
    """
    side = read_sidecar(path, sidecar_in, verify=verify)
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"not a readable safetensors file ({exc})", file=path) from exc
    return tensors, side


# ----------------------------------------------------------------------------------------------- updates


class Update(Protocol):
    """A checked site update: parameters read lazily, one tensor or all at a time."""

    site: str
    round: int
    n_train: int

    def get(self, name: str) -> torch.Tensor:
        """One tensor (checked finite)."""
        ...

    def load(self) -> dict[str, torch.Tensor]:
        """All tensors (checked finite)."""
        ...


def _check_finite(t: torch.Tensor, name: str, site: str, rnd: int) -> torch.Tensor:
    if not bool(torch.isfinite(t).all()):
        raise UpdateRejected(f"update from site {site}, round {rnd}: tensor {name!r} holds NaN or Inf")
    return t


@dataclass
class MemoryUpdate:
    """An update held in memory (tests, and callers that already checked it)."""

    site: str
    round: int
    n_train: int
    tensors: dict[str, torch.Tensor]

    def get(self, name: str) -> torch.Tensor:
        return _check_finite(self.tensors[name], name, self.site, self.round)

    def load(self) -> dict[str, torch.Tensor]:
        return {k: self.get(k) for k in self.tensors}


@dataclass
class FileUpdate:
    """An update file whose sidecar, sha256 and header were checked by :func:`open_update`."""

    path: Path
    site: str
    round: int
    n_train: int
    sidecar: dict[str, Any] = field(repr=False)

    def get(self, name: str) -> torch.Tensor:
        with safe_open(str(self.path), framework="pt") as f:
            return _check_finite(f.get_tensor(name), name, self.site, self.round)

    def load(self) -> dict[str, torch.Tensor]:
        tensors = load_file(str(self.path))
        for k, v in tensors.items():
            _check_finite(v, k, self.site, self.round)
        return tensors


def site_hint(path: Path) -> str:
    """The site named by a ``site-{site}`` folder in ``path``, else the path itself."""
    for part in reversed(path.parts):
        if part.startswith("site-"):
            return part[len("site-") :]
    return f"? ({path})"


def _names(names: set[str], limit: int = 5) -> str:
    s = sorted(names)
    return ", ".join(s[:limit]) + (f" (+{len(s) - limit} more)" if len(s) > limit else "")


def update_status(path: str | Path, sidecar_in: str | Path | None = None) -> dict[str, Any] | None:
    """The sidecar of an update file when it records that the site *failed* this round (``status: failed``,
    written by the site instead of an update), else ``None`` (an update to check with :func:`open_update`)."""
    side_p = Path(sidecar_in) if sidecar_in is not None else sidecar_path(path)
    try:
        side = json.loads(side_p.read_text())
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) and side.get("status") == "failed" else None


def open_update(
    path: str | Path,
    *,
    expected: Spec,
    round: int,
    sidecar_in: str | Path | None = None,
    site: str | None = None,
    global_sha256: str | None = None,
) -> FileUpdate:
    """Check an update file without loading its tensors.

    Checks: the sidecar is readable JSON naming a valid site (``site``, when given: the site whose slot the file
    came in), this ``round`` and a positive integer ``n_train``; the file's sha256 equals the sidecar's; the
    header's own record of kind, round and site agrees with the sidecar; with ``global_sha256``, the update was
    trained from that global model (a replayed or stale update was not); the safetensors header lists exactly the
    ``expected`` names with the expected shapes and dtypes. Finiteness is checked when tensors are read
    (:meth:`FileUpdate.get` / ``load``).

    Raises:
        UpdateRejected: naming the site and round.
    """
    path = Path(path)
    expected_site = site
    site = site if site is not None else site_hint(path)

    def reject(problem: str) -> UpdateRejected:
        return UpdateRejected(f"update from site {site}, round {round} ({path}): {problem}")

    side_p = Path(sidecar_in) if sidecar_in is not None else sidecar_path(path)
    try:
        side = json.loads(side_p.read_text())
    except (OSError, ValueError) as exc:
        raise reject(f"sidecar {side_p} unreadable ({exc})") from exc
    if not isinstance(side, dict):
        raise reject(f"sidecar {side_p} is not a JSON object")
    s = side.get("site")
    if not isinstance(s, str) or not re.match(ID_PATTERN, s):
        raise reject(f"sidecar names no valid site ({s!r})")
    if expected_site is not None and s != expected_site:
        raise reject(f"sidecar names site {s!r}, which is not the site this update came from (not a training site "
                     "of sites.tsv, or another site's update)")
    site = s
    if side.get("round") != round or isinstance(side.get("round"), bool):
        raise reject(f"sidecar is for round {side.get('round')!r}, expected {round}")
    n = side.get("n_train")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise reject(f"n_train must be a positive integer, got {n!r}")
    if not path.is_file():
        raise reject("update file not found")
    if side.get("sha256") != sha256_file(path):
        raise reject("sha256 differs from its sidecar (corrupt or replaced file)")
    if global_sha256 is not None and side.get("global_sha256") != global_sha256:
        raise reject(f"trained from another global model (global_sha256 {str(side.get('global_sha256'))[:12]}, "
                     f"expected {global_sha256[:12]}, the global model of round {round - 1}): a replayed or stale "
                     "update")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
            own = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise reject(f"not a readable safetensors file ({exc})") from exc
    try:
        record = json.loads(own.get("fedglioma", "{}"))
    except ValueError:
        record = None
    if not isinstance(record, dict) or any(record.get(k) != side.get(k) for k in ("kind", "round", "site")):
        raise reject("the file's own header (kind, round, site) disagrees with its sidecar (a file from another "
                     "round or site under this name)")
    missing, unexpected = set(expected) - set(header), set(header) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing parameters: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected parameters: {_names(unexpected)}")
        raise reject("; ".join(parts))
    for k, (shape, dtype) in expected.items():
        got_shape, got_dtype = header[k]
        if got_shape != tuple(shape):
            raise reject(f"tensor {k!r} has shape {list(got_shape)}, expected {list(shape)}")
        if DTYPES.get(got_dtype) != dtype:
            raise reject(f"tensor {k!r} has dtype {got_dtype}, expected {DTYPE_NAMES.get(dtype, str(dtype))}")
    return FileUpdate(path=path, site=site, round=round, n_train=n, sidecar=side)


def load_update(
    path: str | Path,
    sidecar_in: str | Path | None = None,
    *,
    expected: Spec,
    round: int,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Check an update file (see :func:`open_update`) and load all its tensors: ``-> (tensors, sidecar)``.

    Raises:
        UpdateRejected: naming the site and round.
    """
    u = open_update(path, expected=expected, round=round, sidecar_in=sidecar_in)
    return u.load(), u.sidecar
