"""The baselines: centralized training on the pooled training sites, and local-only training of one site.

Both are trained and selected exactly as the federation is, so that the comparison measures federation and
nothing else:

- the same model, initialisation (the round-0 global model), loss, endpoints, augmentation and training loop
  (:func:`fedglioma.train.local.fit_epochs`);
- the same total epochs, cut into the same rounds of ``epochs_per_round`` epochs, with the same learning rate
  per round (:func:`fedglioma.train.schedule.lr_for_round`; one optimiser throughout: centralized training has
  no server to reset it); after every round a checkpoint is written and validated;
- the same training subjects: the union of the sites' own training splits (each site split by
  :func:`fedglioma.train.data.split_subjects` on its own subjects, never on the pool), so no site's
  validation subject is ever trained on;
- the same validation (:func:`fedglioma.train.local.validation_doc` on each site's validation split) and
  therefore the same model selection (:func:`fedglioma.federated.select.select_model` picks the round and the
  thresholds from these files, as it does for the federation).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from fedglioma.atomic import write_json
from fedglioma.endpoints import Endpoints
from fedglioma.errors import ConfigError, InputError
from fedglioma.federated.exchange import save_params
from fedglioma.model import ModelConfig, MultiTaskLoss
from fedglioma.settings import TrainConfig
from fedglioma.train.data import SiteDataset
from fedglioma.train.local import _prepare, fit_epochs, validation_doc
from fedglioma.train.schedule import lr_for_round
from fedglioma.train.seeding import derive_seed, deterministic, pick_device, thread_record

log = logging.getLogger(__name__)


class PooledDataset(ConcatDataset[dict[str, Any]]):
    """The training splits of several sites, one after another (``site`` is the pool's name)."""

    def __init__(self, parts: Sequence[SiteDataset], name: str) -> None:
        super().__init__(list(parts))
        self.site = name
        self.subjects: list[str] = [s for p in parts for s in p.subjects]


def pooled_training_set(
    sites: Mapping[str, tuple[Sequence[str | Path], str | Path]], train_cfg: TrainConfig, name: str
) -> PooledDataset:
    """The union of each site's own training split (subject IDs must be unique across the pooled sites)."""
    parts = [
        SiteDataset(files, labels, site=site, part="train", val_fraction=train_cfg.val_fraction, seed=train_cfg.seed)
        for site, (files, labels) in sites.items()
    ]
    seen: dict[str, str] = {}
    for site, part in zip(sites, parts, strict=True):
        for subject in part.subjects:
            if subject in seen:
                raise InputError(
                    f"subject ID occurs at sites {seen[subject]} and {site}; a pooled baseline needs unique IDs",
                    site=site,
                    subject=subject,
                    fix="prefix the subject IDs with the site, or switch baselines.centralized off",
                )
            seen[subject] = site
    return PooledDataset(parts, name)


def train_baseline(
    init_model: str | Path,
    sites: Mapping[str, tuple[Sequence[str | Path], str | Path]],
    out_models: Sequence[str | Path],
    out_validation: Mapping[str, Sequence[str | Path]],
    *,
    name: str,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    endpoints: Endpoints | None = None,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Train one baseline for ``len(out_models)`` rounds of ``train_cfg.epochs_per_round`` epochs.

    Args:
        init_model: the federation's round-0 global model (same initialisation).
        sites: site -> (its training files, its labels.tsv); one site for local-only training.
        out_models: the checkpoint to write after each round (``round-{r}/model.safetensors``; sidecar beside).
        out_validation: site -> the validation JSON to write after each round (one per round, aligned with
            ``out_models``), scored on that site's validation split.
        name: ``centralized`` or the site's name (seeds and logs).
        train_cfg, model_cfg, endpoints: the ``train:``, ``model:`` and ``endpoints:`` sections.
        threads: CPU threads (ignored on CUDA).

    Returns:
        the checkpoints' sidecars, one per round.
    """
    rounds = len(out_models)
    if rounds < 1:
        raise ConfigError("a baseline needs at least one round (federated.rounds >= 1)")
    if set(out_validation) != set(sites) or any(len(v) != rounds for v in out_validation.values()):
        raise ConfigError(f"out_validation must name one file per round for each of the sites {sorted(sites)}")
    endpoints = endpoints or Endpoints()
    device = pick_device()
    amp = bool(train_cfg.amp and device.type == "cuda")
    sidecars: list[dict[str, Any]] = []
    with deterministic(derive_seed(train_cfg.seed, "baseline", name), threads=threads, device=device):
        model, _ = _prepare(init_model, model_cfg, None, None, device)
        train_ds = pooled_training_set(sites, train_cfg, name)
        if len(train_ds) == 0:
            raise InputError("no training subjects", site=name, fix="check the sites' training files")
        log.info("baseline %s: %d training subjects from %s", name, len(train_ds), ", ".join(sites))
        loss_fn = MultiTaskLoss(train_cfg.task_weights, endpoints)
        opt = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
        e = train_cfg.epochs_per_round
        for r in range(1, rounds + 1):
            lr = lr_for_round(train_cfg, r, rounds)  # the federation's rate of round r
            for group in opt.param_groups:
                group["lr"] = lr
            losses, terms = fit_epochs(
                model, train_ds, opt, loss_fn, train_cfg, device, seed_key=("baseline", name),
                log_as=f"baseline {name} round {r}", first_epoch=(r - 1) * e, amp=amp,
                fault_prefix=f"baseline/{name}/round-{r}",
            )
            side = save_params(
                out_models[r - 1],
                model.state_dict(),
                {
                    "kind": "baseline",
                    "baseline": name,
                    "round": r,
                    "sites": list(sites),
                    "n_train": len(train_ds),
                    "epochs": r * e,
                    "lr": lr,
                    "train_losses": losses,
                    "train_loss_terms": terms,
                    "model": model_cfg.model_dump(),
                    "device": device.type,
                    **thread_record(threads),
                },
            )
            sidecars.append(side)
            for site, (files, labels) in sites.items():
                doc = validation_doc(
                    model, files, labels, device, site=site, round=r, train_cfg=train_cfg, endpoints=endpoints,
                    baseline=name, personalised=False, model_sha256=side.get("sha256"),
                    **thread_record(threads),
                )
                write_json(out_validation[site][r - 1], doc)
    return sidecars
