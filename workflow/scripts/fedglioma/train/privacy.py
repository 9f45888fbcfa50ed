"""Patient-level differential privacy of local training: DP-SGD with Opacus (config ``train.privacy``).

What is private: each subject of a site's training split (one subject = one patient) with respect to everything
the site's local training releases over all its rounds (the parameter updates). Mechanism per step: Poisson
sampling (each training subject joins the step with probability ``q = min(1, batch_size / n)``;
``ceil(n / batch_size)`` steps per epoch), per-subject gradients (Opacus ``GradSampleModule``) of each subject's
own loss (:meth:`fedglioma.model.MultiTaskLoss.per_sample`), each clipped to ``max_grad_norm``, summed, Gaussian
noise of standard deviation ``noise_multiplier * max_grad_norm`` added, divided by the fixed expected batch size
``q n`` (Opacus ``DPOptimizer``), then the AdamW step (and, with FedProx, the data-independent proximal gradient).

Accounting: every step is the same subsampled Gaussian mechanism, so a round is ``(noise_multiplier, q, steps)``
and the site's history is the list of its rounds (consecutive equal entries merged, as Opacus's accountants do).
The history lives in the site's ``local.json`` (site-local, never sent), one round to the next; the epsilon spent
after a round composes the whole history with Opacus's RDP or PRV accountant at the site's delta. Only
:func:`public` (epsilon, delta and the mechanism's settings) goes into the update sidecar and the validation JSON.

Randomness: the Poisson sampling and the noise must be secret to the site (a server that knows the seed could
regenerate the noise and subtract it), so they come from torch generators seeded from ``derive_seed`` of a
site-local random key (:func:`site_key`, created once, kept beside the site's rounds and never sent) with the
site and round. The same key, inputs and thread count give bit-identical training; Opacus's ``secure_mode`` is
off (see docs/training.md).
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedglioma.atomic import atomic_path
from fedglioma.errors import ConfigError, InputError
from fedglioma.settings import PrivacyConfig, TrainConfig
from fedglioma.train.seeding import derive_seed

#: One round of the history: (noise_multiplier, sample_rate, steps), as in Opacus's accountants.
Entry = tuple[float, float, int]

#: Name of the site's secret key file (beside its round folders; never sent, never a declared output).
KEY_NAME = "dp_noise.key"


# ------------------------------------------------------------------------------------------------ accounting


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sampling rate of one step: ``min(1, batch_size / n)``."""
    return min(1.0, batch_size / n)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Steps per local epoch: ``ceil(n / batch_size)`` (as many as without DP)."""
    return math.ceil(n / batch_size)


def default_delta(n: int) -> float:
    """Delta when ``train.privacy.delta`` is null: ``1 / (10 n)``, below ``1 / n`` of the site."""
    return 1.0 / (10 * n)


def merge(history: Sequence[Sequence[float | int]]) -> list[Entry]:
    """The history with consecutive entries of equal noise and sampling rate merged (what Opacus's accountants
    build when stepped one step at a time)."""
    out: list[Entry] = []
    for nm, q, steps in history:
        if out and out[-1][0] == float(nm) and out[-1][1] == float(q):
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(steps))
        else:
            out.append((float(nm), float(q), int(steps)))
    return out


def epsilon(history: Sequence[Sequence[float | int]], delta: float, accountant: str) -> float:
    """Epsilon spent at ``delta`` after ``history`` (Opacus's ``rdp`` or ``prv`` accountant; 0 when empty)."""
    from opacus.accountants import create_accountant

    merged = merge(history)
    if not merged:
        return 0.0
    acc = create_accountant(mechanism=accountant)
    acc.history = merged
    return float(acc.get_epsilon(delta=delta))


def noise_for_target(target_epsilon: float, delta: float, q: float, steps: int, accountant: str) -> float:
    """Noise multiplier that spends at most ``target_epsilon`` over ``steps`` steps at rate ``q`` (Opacus's
    ``get_noise_multiplier``)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=q,
                                      steps=steps, accountant=accountant))


@dataclass(frozen=True)
class PrivacyPlan:
    """The DP settings of one site's round, and the history before it."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int  # this round's steps
    steps_per_epoch: int
    expected_batch_size: int
    delta: float
    accountant: str
    budget: float | None
    history: list[Entry] = field(default_factory=list)  # earlier rounds

    def after(self) -> list[Entry]:
        """The history including this round."""
        return merge([*self.history, (self.noise_multiplier, self.sample_rate, self.steps)])

    def public(self, history: Sequence[Entry] | None = None) -> dict[str, Any]:
        """What the server may see: epsilon after ``history`` (default: including this round) and the settings."""
        hist = self.after() if history is None else merge(history)
        return {
            "epsilon": epsilon(hist, self.delta, self.accountant),
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "sample_rate": self.sample_rate,
            "steps": sum(s for _, _, s in hist),
            "accountant": self.accountant,
        }


def read_history(local_in: str | Path | None, *, site: str, round: int) -> list[Entry]:
    """The site's privacy history before ``round``, from its ``local.json`` of round ``round - 1``.

    Round 1 has none. A later round needs the previous round's site-local state, trained with DP: a round
    trained without it would leave its patients without any bound.
    """
    if round <= 1:
        return []
    if local_in is None:
        raise ConfigError(f"site {site}, round {round}: train.privacy needs the site's local state of round "
                          f"{round - 1} (local.safetensors + local.json) to compose its privacy history. Fix: pass "
                          f"--local-state (the workflow always does)")
    from fedglioma.federated.exchange import read_sidecar

    side = read_sidecar(local_in)
    if side.get("site") != site or side.get("round") != round - 1:
        raise InputError(f"local state of site {side.get('site')} round {side.get('round')}, expected site {site} "
                         f"round {round - 1}", site=site, file=local_in, fix="pass the site's own previous round")
    priv = side.get("privacy")
    if not isinstance(priv, Mapping) or not isinstance(priv.get("history"), list):
        raise ConfigError(f"site {site}: round {round - 1} trained without differential privacy ({local_in} holds "
                          f"no privacy history), so its patients have no privacy bound. Fix: train every round with "
                          f"train.privacy.enabled (delete the site's federated rounds and rerun from round 1)")
    return merge(priv["history"])


def plan_round(privacy: PrivacyConfig, train_cfg: TrainConfig, *, n: int, rounds: int, round: int, site: str,
               history: Sequence[Entry]) -> PrivacyPlan:
    """The round's DP settings; refuses a round that would spend more than the site's budget.

    Args:
        privacy: ``train.privacy`` (enabled).
        train_cfg: ``train`` (batch size, epochs per round).
        n: the site's training subjects.
        rounds: ``federated.rounds`` (the planned schedule of ``target_epsilon``).
        round: this round (1-based).
        site: the site (named in errors).
        history: the site's earlier rounds (:func:`read_history`).

    Raises:
        ConfigError: delta not below 1/n, or the budget would be exceeded (before any training).
    """
    q = sample_rate(n, train_cfg.batch_size)
    per_round = train_cfg.epochs_per_round * steps_per_epoch(n, train_cfg.batch_size)
    delta = privacy.delta if privacy.delta is not None else default_delta(n)
    if delta >= 1.0 / n:
        raise ConfigError(f"site {site}: train.privacy.delta {delta:g} is not below 1/n = {1.0 / n:g} of its {n} "
                          f"training subjects. Fix: set delta below {1.0 / n:g} (or null: 1/(10 n))")
    if privacy.noise_multiplier is not None:
        nm = float(privacy.noise_multiplier)
    else:
        assert privacy.target_epsilon is not None  # the config model requires one of the two
        nm = noise_for_target(privacy.target_epsilon, delta, q, rounds * per_round, privacy.accountant)
    plan = PrivacyPlan(noise_multiplier=nm, max_grad_norm=float(privacy.max_grad_norm), sample_rate=q,
                       steps=per_round, steps_per_epoch=steps_per_epoch(n, train_cfg.batch_size),
                       expected_batch_size=min(train_cfg.batch_size, n), delta=delta,
                       accountant=privacy.accountant, budget=privacy.budget(), history=merge(history))
    if plan.budget is not None:
        spent = epsilon(plan.history, delta, plan.accountant)
        planned = epsilon(plan.after(), delta, plan.accountant)
        if planned > plan.budget:
            raise ConfigError(
                f"site {site}, round {round}: training would spend epsilon {planned:.4g} (delta {delta:.3g}; spent "
                f"so far {spent:.4g} over {sum(s for _, _, s in plan.history)} steps, this "
                f"round {per_round} steps at noise multiplier {nm:.4g}), above the budget {plan.budget:g}; the site "
                f"stops before training. Fix: raise train.privacy.epsilon_budget (or target_epsilon), or train "
                f"fewer rounds or epochs, or raise noise_multiplier")
    return plan


def public(local_side: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The server-visible privacy record of a ``local.json`` sidecar (``None`` when it trained without DP)."""
    priv = (local_side or {}).get("privacy")
    if not isinstance(priv, Mapping):
        return None
    return {k: v for k, v in priv.items() if k != "history"}


# ------------------------------------------------------------------------------------------------ the secret


def site_key(path: str | Path) -> bytes:
    """The site's secret key of the DP randomness: read from ``path``, created there (32 random bytes) when absent.

    Created once per site and kept with its state, so reruns draw the same noise (bit-identical training); never
    part of a declared output or of anything sent.
    """
    path = Path(path)
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(secrets.token_hex(32) + "\n")
        os.chmod(path, 0o600)  # the site's secret: owner only
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise InputError(f"DP key unreadable ({exc})", file=path,
                         fix="delete it only if no round of the site was trained with it") from exc
    if len(key) < 16:
        raise InputError("DP key too short", file=path, fix="restore the site's key file")
    return key


def _generator(key: bytes, *parts: object, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(key.hex(), *parts))
    return g


# ------------------------------------------------------------------------------------------------ training


def make_compatible(model: nn.Module) -> nn.Module:
    """The model ready for Opacus: in-place activations made out-of-place (Opacus's backward hooks refuse views
    modified in place; the values are the same), then validated by Opacus (BatchNorm, for one, is refused)."""
    from opacus.validators import ModuleValidator

    for m in model.modules():
        if isinstance(m, nn.LeakyReLU | nn.ReLU):
            m.inplace = False
    model.train()
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"the network is not DP-compatible: {errors}. Fix: replace these layers "
                          f"(InstanceNorm/GroupNorm instead of BatchNorm)")
    return model


class PrivateTraining:
    """DP-SGD around a model and its optimiser for one site's round (used by
    :func:`fedglioma.train.local.fit_epochs`).

    ``module`` (the Opacus ``GradSampleModule``) runs the forward passes; :meth:`epoch_batches` draws the Poisson
    batches; :meth:`step` makes one private step. :meth:`close` removes the hooks.
    """

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, plan: PrivacyPlan, *, key: bytes, site: str,
                 round: int, n: int, device: torch.device) -> None:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.plan, self.n, self.steps = plan, n, 0
        self.module = GradSampleModule(make_compatible(model), batch_first=True, loss_reduction="sum")
        self.sampler = _generator(key, "dp-sample", site, round, device=torch.device("cpu"))
        self.opt = DPOptimizer(opt, noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
                               expected_batch_size=plan.expected_batch_size, loss_reduction="mean",
                               generator=_generator(key, "dp-noise", site, round, device=device), secure_mode=False)

    def epoch_batches(self) -> list[list[int]]:
        """One epoch of Poisson batches: ``ceil(n / batch_size)`` batches, each subject in each with probability
        ``q`` (possibly empty; as Opacus's ``UniformWithReplacementSampler``)."""
        return [torch.nonzero(torch.rand(self.n, generator=self.sampler) < self.plan.sample_rate).flatten().tolist()
                for _ in range(self.plan.steps_per_epoch)]

    def step(self, losses: torch.Tensor | None, outputs: Mapping[str, torch.Tensor] | None,
             extra_grad: Callable[[], None] | None = None) -> None:
        """One private step: per-subject gradients of ``losses`` (``(B,)``, one per subject; ``None`` for an
        empty batch), clipped, summed, noised and scaled by Opacus; then ``extra_grad`` (data-independent terms
        such as FedProx's) and the optimiser step."""
        self.opt.zero_grad(set_to_none=True)
        if losses is None or outputs is None:
            for p in self.opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        else:
            # every output joins the graph (times 0), so every parameter gets a per-subject gradient (0 where the
            # subject has no label), as the noise is added to all of them
            anchor = sum(o.sum() for o in outputs.values()) * 0.0
            (losses.sum() + anchor).backward()
        if not self.opt.pre_step():
            raise RuntimeError("Opacus skipped a step (gradient accumulation is not used here)")
        if extra_grad is not None:
            extra_grad()
        self.opt.original_optimizer.step()
        self.steps += 1

    def close(self) -> None:
        """Remove Opacus's hooks and per-sample buffers; check that the planned number of steps ran."""
        self.opt.zero_grad(set_to_none=True)
        self.module._close()
        if self.steps != self.plan.steps:
            raise RuntimeError(f"DP accounting: {self.steps} steps ran, {self.plan.steps} were planned")
