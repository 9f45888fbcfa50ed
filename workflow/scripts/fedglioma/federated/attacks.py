"""Simulated attackers for robustness studies (config section ``attack``; benchmarks/robustness.py).

The attacking site trains as usual, then replaces the update it sends: with ``d = w_site - w_global`` its change
to the previous global model, it sends ``w_global + d'`` with

- ``sign_flip``: ``d' = -d`` (pushes the federation back up the loss surface);
- ``scale``: ``d' = factor * d`` (a boosted update, as in model replacement);
- ``noise``: ``d'`` Gaussian noise with ``factor`` times the RMS of ``d`` per tensor (``d`` itself is discarded).

The update is written as a real attacker would: a consistent sidecar and sha256, so that only the server's
numeric defences (robust strategies, the update-norm bound) stand against it. Never set in a real federation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fedglioma.errors import ConfigError
from fedglioma.settings import AttackConfig

if TYPE_CHECKING:  # torch is imported where an attack runs: the Snakefile imports check_attack_site
    import torch

#: Sidecar fields recomputed by :func:`fedglioma.federated.exchange.save_params`.
_COMPUTED = ("sha256", "file", "format", "format_version", "n_tensors", "numel")


def check_attack_site(attack: AttackConfig, train_sites: Sequence[str]) -> None:
    """The attacking site, when set, must be a training site."""
    if attack.site is not None and attack.site not in train_sites:
        raise ConfigError(f"attack.site is {attack.site!r}, which is not a training site of sites.tsv "
                          f"({', '.join(train_sites)}); fix attack.site or set it to null")


def attack_tensors(update: Mapping[str, torch.Tensor], global_prev: Mapping[str, torch.Tensor], attack: AttackConfig,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The manipulated shared parameters (see the module docstring); names, shapes and dtypes unchanged."""
    import torch

    out = {}
    for k, w in update.items():
        base = global_prev[k].to(torch.float64)
        d = w.to(torch.float64) - base
        if attack.kind == "sign_flip":
            d2 = -d
        elif attack.kind == "scale":
            d2 = attack.factor * d
        else:
            rms = float(d.square().mean().sqrt()) if d.numel() else 0.0
            d2 = torch.randn(d.shape, generator=generator, dtype=torch.float64) * (attack.factor * rms)
        out[k] = (base + d2).to(w.dtype)
    return out


def attack_update_file(site_update: str | Path, global_model: str | Path, attack: AttackConfig, *,
                       site_local_patterns: Sequence[str], seed: int) -> None:
    """Rewrite the update file ``site_update`` (and its sidecar) as the attacker sends it."""
    import torch

    from fedglioma.federated.exchange import load_params, save_params
    from fedglioma.federated.params import split_params

    tensors, side = load_params(site_update)
    prev, _ = load_params(global_model)
    shared_prev, _ = split_params(prev, site_local_patterns)
    g = torch.Generator().manual_seed(seed)
    bad = attack_tensors(tensors, shared_prev, attack, g)
    meta = {k: v for k, v in side.items() if k not in _COMPUTED}
    meta["simulated_attack"] = {"kind": attack.kind, "factor": attack.factor}
    save_params(site_update, bad, meta)
