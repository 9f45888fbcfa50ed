"""Learning-rate schedule per federated round (``train.lr_schedule``, ``fedglioma.train.schedule``)."""

from __future__ import annotations

import math

import pytest

from fedglioma.errors import ConfigError
from fedglioma.settings import LrScheduleConfig, TrainConfig, section
from fedglioma.train.schedule import lr_for_round, lr_table


def cosine(warmup: int = 0, floor: float = 0.0, lr: float = 1e-3) -> TrainConfig:
    return TrainConfig(lr=lr, lr_schedule={"name": "cosine", "warmup_rounds": warmup, "min_lr_ratio": floor})


def test_default_is_constant_and_returns_lr_unchanged() -> None:
    cfg = section(TrainConfig, {"lr": 0.002}, "train")
    assert cfg.lr_schedule == LrScheduleConfig()
    # the very value the optimiser got before schedules existed: training stays bit-identical
    assert all(lr_for_round(cfg, r, 7) is cfg.lr for r in range(1, 8))


def test_config_forms() -> None:
    assert section(TrainConfig, {"lr_schedule": "cosine"}, "train").lr_schedule.name == "cosine"
    assert section(TrainConfig, {}, "train").lr_schedule == LrScheduleConfig()
    got = section(TrainConfig, {"lr_schedule": {"name": "cosine", "warmup_rounds": 2, "min_lr_ratio": 0.01}}, "train")
    assert got.lr_schedule == LrScheduleConfig(name="cosine", warmup_rounds=2, min_lr_ratio=0.01)
    assert got.model_dump()["lr_schedule"] == {"name": "cosine", "warmup_rounds": 2, "min_lr_ratio": 0.01}
    for bad in ({"name": "step"}, {"name": "cosine", "warmup": 2}, {"warmup_rounds": -1},
                {"warmup_rounds": 1.5}, {"min_lr_ratio": 2.0}, "linear", 3, None):
        with pytest.raises(ConfigError, match="train.lr_schedule"):
            section(TrainConfig, {"lr_schedule": bad}, "train")


def test_cosine_without_warmup() -> None:
    cfg = cosine()
    lrs = lr_table(cfg, 4)
    assert lrs[0] == pytest.approx(1e-3)  # the first round trains at the peak
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(4)])
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] > 0  # the last round still moves the model


def test_cosine_with_warmup_and_floor() -> None:
    cfg = cosine(warmup=2, floor=0.1)
    lrs = lr_table(cfg, 10)
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # linear ramp reaching lr at round W + 1
    tail = lrs[2:]
    assert all(a > b for a, b in zip(tail, tail[1:], strict=False))
    assert all(x > 1e-4 for x in tail)  # never below the floor lr * min_lr_ratio
    assert tail[-1] == pytest.approx(1e-4 + 9e-4 * (1 + math.cos(math.pi * 7 / 8)) / 2)


def test_one_round_and_bounds() -> None:
    assert lr_for_round(cosine(), 1, 1) == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="outside 1..5"):
        lr_for_round(cosine(), 0, 5)
    with pytest.raises(ConfigError, match="outside 1..5"):
        lr_for_round(TrainConfig(), 6, 5)
    with pytest.raises(ConfigError, match="federated.rounds"):
        lr_for_round(TrainConfig(), 1, 0)
    with pytest.raises(ConfigError, match="warmup_rounds .3. must be below federated.rounds .3."):
        lr_for_round(cosine(warmup=3), 1, 3)


def test_paper_recipe_schedule() -> None:
    """config/paper.yaml: 2 warm-up rounds, cosine over 100 rounds down towards 1 % of lr."""
    cfg = cosine(warmup=2, floor=0.01)
    lrs = lr_table(cfg, 100)
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 2
    assert lrs[51] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * 49 / 98)) / 2)
    assert 1e-5 < lrs[-1] < 2e-5
