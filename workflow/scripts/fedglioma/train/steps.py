"""Workflow steps of training: one public function per step, called the same way by its rule and its subcommand.

Arguments are plain paths (named as the rule names its inputs and outputs), wildcard values, and config
sections as dicts (``<section>_cfg``); see :mod:`fedglioma.registry`.

=========================  ======================  =============================================
function                   rule                    subcommand
=========================  ======================  =============================================
:func:`init_model`         ``init_model``          ``fedglioma train init``
:func:`write_training_set` ``training_set``        ``fedglioma train training-set``
:func:`train_site_round`   ``local_train``         ``fedglioma train local``
:func:`validate_site_round` ``validate_round``     ``fedglioma train validate``
:func:`train_baseline_rounds` ``centralized_train``, ``local_only_train``  ``fedglioma train baseline``
=========================  ======================  =============================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedglioma.atomic import atomic_path
from fedglioma.errors import ConfigError, InputError
from fedglioma.settings import AttackConfig, Endpoints, FederatedConfig, ModelConfig, TrainConfig, section

log = logging.getLogger(__name__)


def _configs(model_cfg: Mapping[str, Any] | None, train_cfg: Mapping[str, Any] | None,
             federated_cfg: Mapping[str, Any] | None) -> tuple[ModelConfig, TrainConfig, FederatedConfig]:
    """The ``model``, ``train`` and ``federated`` sections (as a rule passes them) as their models."""
    return (section(ModelConfig, model_cfg, "model"), section(TrainConfig, train_cfg, "train"),
            section(FederatedConfig, federated_cfg, "federated"))


def _check_sidecar(model: str, meta: str) -> None:
    """A model's sidecar JSON is always written next to it: the declared path must be that one."""
    from fedglioma.federated.exchange import sidecar_path

    if sidecar_path(model) != Path(meta):
        raise ConfigError(f"{meta} is not the sidecar of {model} (expected {sidecar_path(model)})")


def init_model(model: str, meta: str, *, model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any]) -> None:
    """The seeded round-0 global model ``model`` (weights from ``train.seed``) and its sidecar ``meta``."""
    from fedglioma.train.local import init_global

    _check_sidecar(model, meta)
    seed = section(TrainConfig, train_cfg, "train").seed
    side = init_global(Path(model), section(ModelConfig, model_cfg, "model"), seed)
    log.info("wrote %s (%d parameters)", model, side["numel"])


def write_training_set(files: Sequence[str], qc: str, manifest: str, *, site: str,
                       qc_cfg: Mapping[str, Any]) -> None:
    """The site's training files after QC exclusion: one manifest read by every round's jobs and the baselines.

    Training, validation and the baselines read this one file instead of listing every subject's file in every
    round's job, which keeps the DAG of a 100-round federation small. A site left empty fails here, before
    training.

    Args:
        files: the site's ``sub-{subject}_train.npz`` files.
        qc: the site's QC table (``qc/site_qc.tsv``).
        manifest: the manifest to write (TSV: subject, file).
        site: site ID.
        qc_cfg: the config's ``qc`` section (``exclude_flagged``).
    """
    from fedglioma.preprocess.qc import qc_excluded
    from fedglioma.train.data import subject_of

    excluded = qc_excluded(qc, qc_cfg)
    kept = [f for f in files if subject_of(f, site=site) not in excluded]
    if excluded:
        log.info("site %s: %d subject(s) excluded by QC: %s", site, len(excluded), ", ".join(sorted(excluded)))
    if not kept:
        raise InputError("no training subjects left after QC exclusion", site=site, file=qc,
                         fix="check the QC flags or set qc.exclude_flagged: false")
    with atomic_path(manifest) as tmp:
        pd.DataFrame({"subject": [subject_of(f, site=site) for f in kept], "file": kept}).to_csv(
            tmp, sep="\t", index=False)


def read_training_set(path: str, *, site: str) -> list[str]:
    """The training files listed by a :func:`write_training_set` manifest (each must exist)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"training-set manifest unreadable ({exc})", site=site, file=path) from exc
    if list(table.columns) != ["subject", "file"] or table.empty:
        raise InputError("not a training-set manifest (columns subject, file; at least one row)", site=site,
                         file=path, fix="delete it and rerun the training_set rule")
    missing = [f for f in table["file"] if not Path(f).is_file()]
    if missing:
        raise InputError(f"{len(missing)} listed training file(s) missing, first {missing[0]}", site=site,
                         file=path, fix="rerun the preprocessing of the site")
    return table["file"].tolist()


def train_site_round(global_model: str, training_set: str, labels: str, site_update: str, site_update_meta: str,
                     local: str, local_meta: str, *, site: str, round: int, model_cfg: Mapping[str, Any],
                     train_cfg: Mapping[str, Any], federated_cfg: Mapping[str, Any],
                     endpoints_cfg: Mapping[str, Any], attack_cfg: Mapping[str, Any] | None = None,
                     local_state: str | None = None, threads: int = 1) -> None:
    """One site's local epochs of round ``round`` from the previous global model.

    Training runs in a child process (:func:`fedglioma.train.isolate.run_isolated`), up to
    ``federated.site_attempts`` times. When every attempt failed, the site records the failure instead of an
    update (``status: failed`` and the reason in the update's sidecar, an empty parameter file) and keeps its
    site-local parameters; the job succeeds, and the server leaves the site out of this round
    (``federated.min_sites``). The site trains again in the next round.

    Args:
        global_model: the global model of the previous round.
        training_set: the site's training-set manifest (:func:`write_training_set`).
        labels: the site's ``labels.tsv``.
        site_update, site_update_meta: the shared parameters to send to the server, and their sidecar.
        local, local_meta: the site-local parameters (FedBN-style, never sent), and their sidecar.
        attack_cfg: the config's ``attack`` section (a simulated attacker, robustness studies only).
        local_state: the site's ``local.safetensors`` of the previous round (none in round 1).
        threads: CPU threads.
    """
    from fedglioma.faults import fault_point
    from fedglioma.train.isolate import run_isolated
    from fedglioma.train.local import local_train

    _check_sidecar(site_update, site_update_meta)
    _check_sidecar(local, local_meta)
    m, t, f = _configs(model_cfg, train_cfg, federated_cfg)
    attack = section(AttackConfig, attack_cfg, "attack")

    def attempt() -> None:
        fault_point(f"local_train/{site}/round-{round}/start")
        local_train(global_model, read_training_set(training_set, site=site), labels, site_update, site_update_meta,
                    site=site, round=round, train_cfg=t, model_cfg=m, strategy_cfg=f, threads=threads,
                    local_in=local_state, local_out=local, endpoints=section(Endpoints, endpoints_cfg, "endpoints"))

    reasons = []
    for i in range(1, f.site_attempts + 1):
        why = run_isolated(attempt)
        if why is None:
            break
        reasons.append(why)
        log.warning("site %s, round %d: attempt %d of %d failed: %s", site, round, i, f.site_attempts, why)
    else:
        _record_failure(global_model, site_update, local, local_state, site=site, round=round,
                        patterns=f.site_local_patterns, reason=reasons[-1], attempts=len(reasons),
                        private=t.privacy.enabled)
        log.error("site %s, round %d: no update after %d attempt(s); recorded the failure, the server leaves the "
                  "site out of this round", site, round, len(reasons))
        return
    if attack.site == site:
        from fedglioma.federated.attacks import attack_update_file
        from fedglioma.train.seeding import derive_seed

        log.warning("site %s, round %d: SIMULATED ATTACK (%s) on the update sent", site, round, attack.kind)
        attack_update_file(site_update, global_model, attack, site_local_patterns=f.site_local_patterns,
                           seed=derive_seed(t.seed, "attack", site, round))


def record_missed_round(global_model: str, site_update: str, local: str, local_state: str | None, *, site: str,
                        round: int, federated_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any],
                        reason: str) -> None:
    """A round the site did not train in at all (across institutions: its SuperNode was down), recorded as the
    workflow records a site whose attempts all failed: an empty update with ``status: failed`` and ``reason``, and
    the site-local parameters carried over (``local_state``: the previous round's ``local.safetensors``; without
    one, those of ``global_model``, any global model of the run: site-local parameters are never aggregated)."""
    _check_sidecar(site_update, str(Path(site_update).with_suffix(".json")))
    f, t = section(FederatedConfig, federated_cfg, "federated"), section(TrainConfig, train_cfg, "train")
    _record_failure(global_model, site_update, local, local_state, site=site, round=round,
                    patterns=f.site_local_patterns, reason=reason, attempts=0, private=t.privacy.enabled)


def _record_failure(global_model: str, site_update: str, local: str, local_state: str | None, *, site: str,
                    round: int, patterns: Sequence[str], reason: str, attempts: int, private: bool) -> None:
    """The outputs of a site that failed the round: an empty update whose sidecar says ``status: failed`` and why,
    and the site-local parameters the site still holds (last round's, or the global model's in round 1). Under DP
    the site's privacy history carries over unchanged: nothing trained in the failed round left the site."""
    from fedglioma.federated.exchange import load_params, read_sidecar, save_params
    from fedglioma.federated.params import split_params

    kept, _ = load_params(local_state if local_state is not None and patterns else global_model)
    _, site_local = split_params(kept, patterns)
    side: dict[str, Any] = {"kind": "local", "round": round, "site": site, "patterns": list(patterns),
                            "status": "failed"}
    if private:
        before = read_sidecar(local_state).get("privacy") if local_state is not None else None
        side["privacy"] = dict(before) if isinstance(before, Mapping) else {"epsilon": 0.0, "history": []}
    save_params(site_update, {}, {"kind": "update", "status": "failed", "round": round, "site": site,
                                  "reason": reason, "attempts": attempts})
    save_params(local, site_local, side)


def validate_site_round(global_model: str, training_set: str, labels: str, validation: str, *, site: str,
                        round: int, model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any],
                        federated_cfg: Mapping[str, Any], endpoints_cfg: Mapping[str, Any],
                        local_state: str | None = None, threads: int = 1) -> None:
    """The global model of round ``round`` on the site's validation split: site-aggregated ``validation`` JSON.

    With ``federated.site_local_patterns`` (FedBN) the site's own ``local_state`` of this round replaces those
    parameters (the personalised model). With ``train.privacy`` on, the validation JSON records the site's spent
    (epsilon, delta) from ``local_state``'s sidecar; otherwise ``local_state`` is not read.
    """
    from fedglioma.train.local import validate

    m, t, f = _configs(model_cfg, train_cfg, federated_cfg)
    personal = local_state if f.site_local_patterns else None
    validate(global_model, read_training_set(training_set, site=site), labels, validation, site=site,
             round=round, train_cfg=t, model_cfg=m, threads=threads, local_in=personal,
             site_local_patterns=f.site_local_patterns or None,
             endpoints=section(Endpoints, endpoints_cfg, "endpoints"),
             privacy=_spent_privacy(local_state, site=site, round=round) if t.privacy.enabled else None)


def _spent_privacy(local_state: str | None, *, site: str, round: int) -> dict[str, Any]:
    """The site's spent (epsilon, delta) after ``round``, from this round's ``local.json`` (train.privacy on)."""
    from fedglioma.federated.exchange import read_sidecar
    from fedglioma.train.privacy import public

    if local_state is None:
        raise ConfigError(f"site {site}, round {round}: train.privacy is on and validation records the spent "
                          f"epsilon from the round's local.json. Fix: pass --local-state (the workflow always does)")
    side = read_sidecar(local_state)
    doc = public(side)
    if doc is None or side.get("round") != round or side.get("site") != site:
        raise InputError(f"holds no privacy record of site {site} round {round} (trained without DP?)", site=site,
                         file=local_state, fix="rerun the site's local_train of this round with train.privacy on")
    return doc


def train_baseline_rounds(init: str, training_sets: Sequence[str], labels: Sequence[str], models: Sequence[str],
                          metas: Sequence[str], validation: Sequence[str], *, sites: Sequence[str], name: str,
                          model_cfg: Mapping[str, Any], train_cfg: Mapping[str, Any],
                          endpoints_cfg: Mapping[str, Any], threads: int = 1) -> None:
    """A baseline (centralized: several sites pooled; local-only: one site) trained, checkpointed and validated
    round by round (:func:`fedglioma.train.baseline.train_baseline`).

    Args:
        init: the federation's round-0 model (the same initialisation).
        training_sets, labels: each site's manifest and ``labels.tsv``, in the order of ``sites``.
        models, metas: one checkpoint (and its sidecar) per round.
        validation: one validation JSON per round and site, round-major (round 1 of every site, then round 2, ...).
        sites: the pooled sites.
        name: ``centralized`` or the site of a local-only baseline.
    """
    from fedglioma.train.baseline import train_baseline

    sites = list(sites)
    if not (len(training_sets) == len(labels) == len(sites)):
        raise ConfigError(f"baseline {name}: {len(training_sets)} training sets and {len(labels)} label tables "
                          f"for {len(sites)} sites {sites}")
    for model, meta in zip(models, metas, strict=True):
        _check_sidecar(model, meta)
    rounds = len(models)
    if len(validation) != rounds * len(sites):
        raise ConfigError(f"{len(validation)} validation outputs for {rounds} rounds x {len(sites)} sites")
    per_site = {s: [validation[r * len(sites) + i] for r in range(rounds)] for i, s in enumerate(sites)}
    m, t, _ = _configs(model_cfg, train_cfg, None)
    pooled = {s: (read_training_set(ts, site=s), lab) for s, ts, lab in zip(sites, training_sets, labels, strict=True)}
    train_baseline(init, pooled, models, per_site, name=name, train_cfg=t, model_cfg=m,
                   endpoints=section(Endpoints, endpoints_cfg, "endpoints"), threads=threads)
