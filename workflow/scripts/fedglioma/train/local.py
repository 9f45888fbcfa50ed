"""Site-side work: initial model, local training of one round, validation, loading a model, prediction.

File layout of a round (paths decided by the workflow):

- ``global(r-1).safetensors`` (+ ``.json``): received from the server; all parameters.
- ``update.safetensors`` (+ ``.json``): written by :func:`local_train`; shared parameters only; sent to the server.
- ``local.safetensors`` (+ ``.json``): written by :func:`local_train`; the site-local parameters
  (``federated.site_local_patterns``); never leaves the site; read back by the next round and by :func:`validate`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fedglioma.atomic import jsonable, write_json
from fedglioma.constants import BINARY_TASKS, TASKS
from fedglioma.endpoints import Endpoints
from fedglioma.errors import ConfigError, InputError
from fedglioma.faults import fault_point
from fedglioma.federated.exchange import load_params, save_params
from fedglioma.federated.params import is_site_local, split_params
from fedglioma.model import ModelConfig, MultiTaskLoss, MultiTaskUNet, build_model, label_masks, soft_dice_loss
from fedglioma.settings import FederatedConfig, TrainConfig
from fedglioma.train.augment import augment_batch
from fedglioma.train.data import SiteDataset, collate
from fedglioma.train.metrics import (
    THRESHOLD_GRID,
    auc_or_none,
    dice_score,
    multiclass_auc_or_none,
    threshold_counts,
)
from fedglioma.train.schedule import lr_for_round
from fedglioma.train.seeding import derive_seed, deterministic, generator, pick_device, thread_record

if TYPE_CHECKING:
    from fedglioma.train.privacy import PrivateTraining

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ models


def init_global(
    out: str | Path, model_cfg: ModelConfig, seed: int, *, sidecar_out: str | Path | None = None
) -> dict[str, Any]:
    """Write the round-0 global model: weights initialised from ``seed`` (all parameters, site-local included).

    Returns the sidecar written beside ``out``.
    """
    with deterministic(derive_seed(seed, "init")):
        model = build_model(model_cfg)
    state = model.state_dict()
    return save_params(
        out,
        state,
        {"kind": "global", "round": 0, "seed": seed, "model": model_cfg.model_dump(), "n_train": 0},
        sidecar_out=sidecar_out,
    )


def _check_arch(side: Mapping[str, Any], model_cfg: ModelConfig, path: str | Path) -> None:
    saved = side.get("model")
    if isinstance(saved, Mapping):
        arch = {k: saved.get(k) for k in model_cfg.architecture()}
        if arch != model_cfg.architecture():
            raise ConfigError(f"{path} was built with model {arch}, the config says {model_cfg.architecture()}")


def _load_state(model: MultiTaskUNet, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    try:
        model.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"parameters in {path} do not fit the configured model: {exc}") from exc


def _merge_local(
    state: dict[str, torch.Tensor], local_in: str | Path | None, patterns: Sequence[str] | None
) -> dict[str, torch.Tensor]:
    """Overlay the site-local parameters of ``local_in`` on ``state``."""
    if local_in is None:
        return state
    local, _ = load_params(local_in)
    unknown = sorted(set(local) - set(state))
    if unknown:
        raise ConfigError(f"{local_in} holds parameters the model lacks: {unknown[:5]}")
    if patterns is not None:
        wanted = {k for k in state if is_site_local(k, patterns)}
        if set(local) != wanted:
            raise ConfigError(
                f"{local_in} holds other site-local parameters than federated.site_local_patterns select "
                f"(patterns changed between rounds?)"
            )
    for k, v in local.items():
        if v.shape != state[k].shape:
            raise ConfigError(f"{local_in}: {k!r} has shape {list(v.shape)}, the model {list(state[k].shape)}")
    return {**state, **local}


def load_model(
    path: str | Path,
    model_cfg: ModelConfig,
    *,
    local_in: str | Path | None = None,
    device: torch.device | str | None = None,
) -> MultiTaskUNet:
    """Load a model from a parameter file (sha256 checked against its sidecar), in eval mode.

    Args:
        path: ``global.safetensors`` (all parameters).
        model_cfg: the configured architecture (must match the file).
        local_in: optional ``local.safetensors`` whose site-local parameters replace the global ones.
        device: default CPU.
    """
    state, side = load_params(path)
    _check_arch(side, model_cfg, path)
    return model_from_state(_merge_local(state, local_in, None), model_cfg, what=path, device=device)


def model_from_state(state: Mapping[str, torch.Tensor], model_cfg: ModelConfig, *, what: str | Path,
                     device: torch.device | str | None = None) -> MultiTaskUNet:
    """The model ``model_cfg`` with the parameters ``state`` (all of them, strictly), in eval mode.

    ``what`` names the parameters' source in errors (a file, or a bundle member)."""
    model = build_model(model_cfg)
    _load_state(model, state, what)
    return model.to(device or "cpu").eval()


@torch.no_grad()
def predict(model: MultiTaskUNet, image: np.ndarray) -> tuple[np.ndarray, dict[str, float | list[float]]]:
    """Predict one subject.

    Args:
        model: a loaded model (its device is used; it is put in eval mode).
        image: float ``(4, X, Y, Z)`` in ``MODALITIES`` order, normalised like the training files.

    Returns:
        ``(seg_prob, probs)``: ``seg_prob`` float32 ``(X, Y, Z)`` whole-tumour probability; ``probs`` with
        ``idh``, ``codeletion``, ``mgmt`` (probability of the positive class, float) and ``grade``
        (probabilities of WHO 2/3/4, list of 3 floats).
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None].to(device)
    out = model(x)
    seg = torch.sigmoid(out["seg"])[0, 0].float().cpu().numpy()
    probs: dict[str, float | list[float]] = {t: float(torch.sigmoid(out[t][0])) for t in BINARY_TASKS}
    probs["grade"] = [float(p) for p in torch.softmax(out["grade"][0].float(), dim=0)]
    return seg, probs


# ----------------------------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_dataset(
    model: MultiTaskUNet,
    dataset: SiteDataset,
    loss_fn: MultiTaskLoss,
    device: torch.device,
    *,
    with_thresholds: bool = False,
) -> dict[str, Any]:
    """Site-aggregated metrics of ``model`` on ``dataset`` (one subject at a time, no augmentation).

    Returns ``{"n_val", "metrics": {loss, loss_terms, dice_mean, n_seg, auc, n_auc}}`` and, when
    ``with_thresholds``, ``"thresholds": {"grid": [...], "tasks": {task: {tp, fp, tn, fn}}}`` for idh,
    codeletion, mgmt and grade4 (grade 4 vs 2/3). Nothing per subject is returned.
    """
    model.eval()
    logits: dict[str, list[torch.Tensor]] = {t: [] for t in TASKS}
    labels: list[torch.Tensor] = []
    seg_losses: list[float] = []
    dices: list[float] = []
    for i in range(len(dataset)):
        s = collate([dataset[i]], site=dataset.site)
        out = model(s["image"].to(device))
        if bool(s["has_seg"][0]):
            lg, tg = out["seg"].float(), s["tumour"].to(device)
            seg_losses.append(float(soft_dice_loss(lg, tg) + F.binary_cross_entropy_with_logits(lg, tg)))
            dices.append(dice_score(torch.sigmoid(lg)[0, 0].cpu().numpy(), s["tumour"][0, 0].numpy()))
        for t in TASKS:
            logits[t].append(out[t].float().cpu())
        labels.append(s["labels"])
    n = len(dataset)
    metrics: dict[str, Any] = {"loss": None, "loss_terms": {}, "dice_mean": None, "n_seg": len(dices)}
    auc: dict[str, float | None] = {}
    n_auc: dict[str, int] = {}
    counts: dict[str, dict[str, list[int]]] = {}
    if n:
        lab = torch.cat(labels)  # (N, 4)
        out_all = {t: torch.cat(v) for t, v in logits.items()}
        out_all["seg"] = torch.zeros(n, 1, 1, 1, 1)
        _, terms = loss_fn(out_all, torch.zeros(n, 1, 1, 1, 1), torch.zeros(n, dtype=torch.bool), lab)
        loss_terms = {k: float(v) for k, v in terms.items()}
        if seg_losses and loss_fn.weights["seg"] > 0:
            loss_terms["seg"] = float(np.mean(seg_losses))
        metrics["loss_terms"] = loss_terms
        if loss_terms:
            metrics["loss"] = float(sum(loss_fn.weights[k] * v for k, v in loss_terms.items()))
        if dices:
            metrics["dice_mean"] = float(np.mean(dices))
        masks = label_masks(lab, loss_fn.endpoints)
        for i, t in enumerate(BINARY_TASKS):
            m = masks[t].numpy()
            y = lab[:, i].numpy()[m]
            p = torch.sigmoid(out_all[t]).numpy()[m]
            auc[t], n_auc[t] = auc_or_none(y, p), int(m.sum())
            counts[t] = threshold_counts(y, p)
        m = masks["grade"].numpy()
        g = lab[:, TASKS.index("grade")].numpy()[m].astype(int)
        pg = torch.softmax(out_all["grade"], dim=1).numpy()[m]
        auc["grade4"], n_auc["grade4"] = auc_or_none(g == 2, pg[:, 2]), int(m.sum())
        auc["grade_ovr"], n_auc["grade_ovr"] = multiclass_auc_or_none(g, pg), int(m.sum())
        counts["grade4"] = threshold_counts(g == 2, pg[:, 2])
    metrics["auc"], metrics["n_auc"] = auc, n_auc
    result: dict[str, Any] = {"n_val": n, "endpoints": loss_fn.endpoints.model_dump(), "metrics": metrics}
    if with_thresholds:
        result["thresholds"] = {"grid": list(THRESHOLD_GRID), "tasks": counts}
    return result


# ------------------------------------------------------------------------------------------------ training


def _prepare(
    global_in: str | Path,
    model_cfg: ModelConfig,
    local_in: str | Path | None,
    patterns: Sequence[str] | None,
    device: torch.device,
) -> tuple[MultiTaskUNet, dict[str, Any]]:
    """Model with the global parameters (and the site-local ones of ``local_in``) and the global's sidecar."""
    state, side = load_params(global_in)
    _check_arch(side, model_cfg, global_in)
    state = _merge_local(state, local_in, patterns)
    model = build_model(model_cfg)
    _load_state(model, state, global_in)
    return model.to(device), side


def fit_epochs(
    model: MultiTaskUNet,
    train_ds: Dataset[dict[str, Any]],
    opt: torch.optim.Optimizer,
    loss_fn: MultiTaskLoss,
    train_cfg: TrainConfig,
    device: torch.device,
    *,
    seed_key: tuple[Any, ...],
    log_as: str,
    epochs: int | None = None,
    first_epoch: int = 0,
    anchors: Mapping[str, torch.Tensor] | None = None,
    mu: float = 0.0,
    amp: bool = False,
    dp: PrivateTraining | None = None,
    fault_prefix: str | None = None,
) -> tuple[list[float | None], list[dict[str, float]]]:
    """Train ``model`` for ``epochs`` (default ``train_cfg.epochs_per_round``) epochs on ``train_ds``.

    The one training loop of the package: federated local training and the baselines both run it. Each epoch's
    order and augmentation come from ``generator(train_cfg.seed, "epoch", *seed_key, epoch)`` (epochs numbered
    from ``first_epoch``). With ``anchors`` and ``mu > 0`` the FedProx term ``mu/2 * ||w - anchor||^2`` is added.
    With ``dp`` (:class:`fedglioma.train.privacy.PrivateTraining`) each step is a DP-SGD step instead: Poisson
    batches from the site's secret generator, every subject's own loss, per-subject clipping and noise
    (``train.grad_clip`` is not applied; the FedProx gradient is added after the noise).
    With ``fault_prefix`` every optimiser step passes the fault point ``{fault_prefix}/epoch-{e}/step-{s}``
    (both counted from 1; :mod:`fedglioma.faults`).

    Returns:
        per epoch, the mean total loss over steps (``None`` when no batch had a label) and the mean of each term.
    """
    params = dict(model.named_parameters())
    epoch_losses: list[float | None] = []
    epoch_terms: list[dict[str, float]] = []
    n = len(train_ds)  # type: ignore[arg-type]
    bs = train_cfg.batch_size
    site = getattr(train_ds, "site", None)
    for epoch in range(first_epoch, first_epoch + (train_cfg.epochs_per_round if epochs is None else epochs)):
        model.train()
        gen = generator(train_cfg.seed, "epoch", *seed_key, epoch)
        if dp is None:
            order = torch.randperm(n, generator=gen).tolist()
            batches = [order[start : start + bs] for start in range(0, n, bs)]
        else:
            batches = dp.epoch_batches()
        sums: dict[str, float] = {}
        steps = 0
        total_sum = 0.0
        for idx in batches:
            if dp is not None and not idx:  # an empty Poisson batch: a step of noise only
                dp.step(None, None, _prox_grad(params, anchors, mu))
                steps += 1
                continue
            batch = collate([train_ds[i] for i in idx], site=site)
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            batch = augment_batch(batch, train_cfg.augment, gen)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = (model if dp is None else dp.module)(batch["image"])
            out = {k: v.float() for k, v in out.items()}
            if dp is not None:
                losses, terms = loss_fn.per_sample(out, batch["tumour"], batch["has_seg"], batch["labels"])
                dp.step(losses, out, _prox_grad(params, anchors, mu))
                steps += 1
                if fault_prefix is not None:
                    fault_point(f"{fault_prefix}/epoch-{epoch + 1}/step-{steps}")
                total_sum += losses.sum().item() / dp.plan.expected_batch_size
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v.item()
                continue
            loss, terms = loss_fn(out, batch["tumour"], batch["has_seg"], batch["labels"])
            if loss is None:
                continue
            if anchors and mu > 0:
                prox = sum(((params[k] - a) ** 2).sum() for k, a in anchors.items())
                loss = loss + 0.5 * mu * prox
                terms["prox"] = prox.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            opt.step()
            steps += 1
            if fault_prefix is not None:
                fault_point(f"{fault_prefix}/epoch-{epoch + 1}/step-{steps}")
            total_sum += loss.item()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.item()
        epoch_losses.append(total_sum / steps if steps else None)
        epoch_terms.append({k: v / steps for k, v in sums.items()})
        log.info("%s epoch %d: loss %s", log_as, epoch + 1, epoch_losses[-1])
    return epoch_losses, epoch_terms


def _prox_grad(params: Mapping[str, torch.Tensor], anchors: Mapping[str, torch.Tensor] | None,
               mu: float) -> Any:
    """Under DP, FedProx's gradient ``mu (w - anchor)`` (data-independent) added after the noise; None without."""
    if not anchors or mu <= 0:
        return None

    def add() -> None:
        with torch.no_grad():
            for k, a in anchors.items():
                p = params[k]
                p.grad = mu * (p - a) if p.grad is None else p.grad.add_(p - a, alpha=mu)

    return add


def local_train(
    global_in: str | Path,
    npz_files: Sequence[str | Path],
    labels_tsv: str | Path,
    update_out: str | Path,
    sidecar_out: str | Path | None = None,
    *,
    site: str,
    round: int,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    strategy_cfg: FederatedConfig,
    threads: int = 1,
    local_in: str | Path | None = None,
    local_out: str | Path | None = None,
    endpoints: Endpoints | None = None,
    dp_key: str | Path | None = None,
) -> dict[str, Any]:
    """Train the global model of round ``round - 1`` on one site for ``train_cfg.epochs_per_round`` epochs.

    AdamW on all parameters; with ``strategy_cfg.strategy == "fedprox"`` and ``mu > 0`` the proximal term
    ``mu/2 * ||w - w_global||^2`` over the shared parameters is added to every step's loss. Deterministic on CPU:
    the same inputs, seed and thread count give a bit-identical update file.

    Args:
        global_in: global model of the previous round (sidecar beside it).
        npz_files: the site's ``sub-{subject}_train.npz`` files (all of them; the split is made here).
        labels_tsv: the site's ``labels.tsv``.
        update_out: ``update.safetensors`` to write: shared parameters only (sent to the server).
        sidecar_out: its sidecar (default ``update.json`` beside it).
        site, round: identify the update.
        train_cfg, model_cfg, strategy_cfg: the ``train:``, ``model:`` and ``federated:`` sections.
        threads: CPU threads (ignored on CUDA).
        local_in: this site's ``local.safetensors`` of the previous round (``None`` in round 1: the global
            model's values are used).
        local_out: where to write this round's site-local parameters (required when
            ``site_local_patterns`` is not empty; an empty file otherwise).
        endpoints: which subjects count for each task (config ``endpoints``; default 1p/19q within IDH-mutant).
        dp_key: with ``train.privacy.enabled``, the site's secret key of the DP randomness
            (:func:`fedglioma.train.privacy.site_key`; default ``dp_noise.key`` two folders above ``update_out``,
            i.e. ``results/sites/{site}/federated/``).

    Returns:
        the update's sidecar: ``round``, ``site``, ``n_train``, ``n_val``, ``train_losses`` (per epoch; ``None``
        under DP, kept in ``local.json``), ``train_loss_terms``, ``validation`` (site-aggregated metrics of the
        trained model), ``privacy`` (:func:`fedglioma.train.privacy.PrivacyPlan.public`, ``None`` without DP),
        ``sha256``.
    """
    patterns = strategy_cfg.site_local_patterns
    if patterns and local_out is None:
        raise ConfigError("federated.site_local_patterns is set: local_train needs local_out (local.safetensors)")
    privacy = train_cfg.privacy
    if privacy.enabled and local_out is None:
        raise ConfigError("train.privacy is on: local_train needs local_out (local.json keeps the privacy history)")
    device = pick_device()
    amp = bool(train_cfg.amp and device.type == "cuda")
    seed = derive_seed(train_cfg.seed, "local_train", site, round)
    with deterministic(seed, threads=threads, device=device):
        model, global_side = _prepare(global_in, model_cfg, local_in, patterns, device)
        ds_kw = {"site": site, "val_fraction": train_cfg.val_fraction, "seed": train_cfg.seed}
        train_ds = SiteDataset(npz_files, labels_tsv, part="train", **ds_kw)
        val_ds = SiteDataset(npz_files, labels_tsv, part="val", **ds_kw)
        if len(train_ds) == 0:
            raise InputError("no training subjects", site=site, fix="check the site's training files")
        loss_fn = MultiTaskLoss(train_cfg.task_weights, endpoints)
        mu = float(strategy_cfg.mu) if strategy_cfg.strategy == "fedprox" else 0.0
        anchors = {
            n: p.detach().clone() for n, p in model.named_parameters() if mu > 0 and not is_site_local(n, patterns)
        }
        lr = lr_for_round(train_cfg, round, strategy_cfg.rounds)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=train_cfg.weight_decay)
        dp, plan = None, None
        if privacy.enabled:
            from fedglioma.train import privacy as dpriv

            history = dpriv.read_history(local_in, site=site, round=round)
            plan = dpriv.plan_round(privacy, train_cfg, n=len(train_ds), rounds=strategy_cfg.rounds, round=round,
                                    site=site, history=history)
            key = dpriv.site_key(dp_key if dp_key is not None else Path(update_out).parent.parent / dpriv.KEY_NAME)
            dp = dpriv.PrivateTraining(model, opt, plan, key=key, site=site, round=round, n=len(train_ds),
                                       device=device)
        epoch_losses, epoch_terms = fit_epochs(
            model, train_ds, opt, loss_fn, train_cfg, device, seed_key=(site, round), log_as=f"site {site} round {round}",
            anchors=anchors, mu=mu, amp=amp, dp=dp, fault_prefix=f"local_train/{site}/round-{round}",
        )
        privacy_doc = None
        if dp is not None and plan is not None:
            dp.close()
            privacy_doc = plan.public()
            log.info("site %s round %d: DP epsilon %.4g at delta %.3g (%s, noise multiplier %.4g)", site, round,
                     privacy_doc["epsilon"], plan.delta, plan.accountant, plan.noise_multiplier)
        n = len(train_ds)
        validation = evaluate_dataset(model, val_ds, loss_fn, device) if len(val_ds) else {"n_val": 0, "metrics": None}
        shared, local = split_params(model.state_dict(), patterns)
        side = save_params(
            update_out,
            shared,
            {
                "kind": "update",
                "round": round,
                "site": site,
                "global_sha256": global_side.get("sha256"),
                "n_train": n,
                "n_val": len(val_ds),
                "strategy": strategy_cfg.strategy,
                "mu": mu,
                "epochs": train_cfg.epochs_per_round,
                "lr": lr,
                # under DP the training losses stay at the site (local.json): they are not privatised
                "train_losses": epoch_losses if dp is None else None,
                "train_loss_terms": epoch_terms if dp is None else None,
                "validation": validation["metrics"],
                "model": model_cfg.model_dump(),
                "device": device.type,
                "privacy": privacy_doc,
                **thread_record(threads),
            },
            sidecar_out=sidecar_out,
        )
        fault_point(f"local_train/{site}/round-{round}/after-update")  # update and sidecar written, local not
        if local_out is not None:
            local_side: dict[str, Any] = {"kind": "local", "round": round, "site": site, "patterns": list(patterns),
                                          **thread_record(threads)}
            if plan is not None and privacy_doc is not None:
                local_side["privacy"] = {**privacy_doc, "history": [list(e) for e in plan.after()]}
                local_side["train_losses"], local_side["train_loss_terms"] = epoch_losses, epoch_terms
            save_params(local_out, local, local_side)
    return side


def validation_doc(
    model: MultiTaskUNet,
    npz_files: Sequence[str | Path],
    labels_tsv: str | Path,
    device: torch.device,
    *,
    site: str,
    round: int,
    train_cfg: TrainConfig,
    endpoints: Endpoints | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The validation JSON of ``model`` on the site's validation split (site-aggregated metrics only).

    The one validation of the package: :func:`validate` (federated rounds) and the baselines
    (:func:`fedglioma.train.baseline.train_baseline`) both call it, so every arm is scored and thresholded alike.
    Holds ``kind``, ``round``, ``site``, ``extra`` keys, ``n_val``, ``endpoints``, ``metrics`` (loss,
    loss_terms, dice_mean, n_seg, auc, n_auc) and ``thresholds`` (grid and per-task tp/fp/tn/fn over it); never
    per-subject values.
    """
    val_ds = SiteDataset(
        npz_files, labels_tsv, site=site, part="val", val_fraction=train_cfg.val_fraction, seed=train_cfg.seed
    )
    loss_fn = MultiTaskLoss(train_cfg.task_weights, endpoints)
    result = evaluate_dataset(model, val_ds, loss_fn, device, with_thresholds=True)
    return jsonable({"kind": "validation", "round": round, "site": site, **extra, **result})


def validate(
    global_in: str | Path,
    npz_files: Sequence[str | Path],
    labels_tsv: str | Path,
    out_json: str | Path,
    *,
    site: str,
    round: int,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    threads: int = 1,
    local_in: str | Path | None = None,
    site_local_patterns: Sequence[str] | None = None,
    endpoints: Endpoints | None = None,
    privacy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the global model of ``round`` on the site's validation split; write :func:`validation_doc`.

    With ``local_in`` the site's own site-local parameters replace the global ones (the personalised model).
    ``privacy``: the site's spent (epsilon, delta) after this round (:func:`fedglioma.train.privacy.public`),
    recorded as ``privacy`` (``None`` without DP).
    """
    device = pick_device()
    with deterministic(derive_seed(train_cfg.seed, "validate", site, round), threads=threads, device=device):
        model, gside = _prepare(global_in, model_cfg, local_in, site_local_patterns, device)
        doc = validation_doc(
            model, npz_files, labels_tsv, device, site=site, round=round, train_cfg=train_cfg, endpoints=endpoints,
            personalised=local_in is not None, model_sha256=gside.get("sha256"), **thread_record(threads),
            privacy=dict(privacy) if privacy is not None else None,
        )
    fault_point(f"validate_round/{site}/round-{round}/before-write")
    write_json(out_json, doc)
    return doc
