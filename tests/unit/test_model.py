"""Network shapes, parameter naming and the masked multi-task loss."""

from __future__ import annotations

import math

import pytest
import torch

from fedglioma.errors import ConfigError
from fedglioma.federated.params import is_site_local
from fedglioma.model import ModelConfig, MultiTaskLoss, build_model, label_masks, soft_dice_loss
from fedglioma.settings import TaskWeights, section

NAN = math.nan


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(width=4, depth=2, dropout=0.0))


def test_output_shapes_with_padding(model: torch.nn.Module) -> None:
    out = model(torch.randn(2, 4, 17, 16, 15))
    assert out["seg"].shape == (2, 1, 17, 16, 15)
    for t in ("idh", "codeletion", "mgmt"):
        assert out[t].shape == (2,)
    assert out["grade"].shape == (2, 3)


def test_wrong_input_channels(model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, 3, 16, 16, 16))


def test_norm_parameters_are_selectable(model: torch.nn.Module) -> None:
    names = [n for n, _ in model.named_parameters()]
    norms = [n for n in names if is_site_local(n, ["*.norm*"])]
    assert norms and all(".norm" in n for n in norms)
    assert not any(is_site_local(n, ["*.norm*"]) for n in names if "conv" in n or "heads" in n)
    assert {"heads.idh.fc2.weight", "heads.grade.fc2.bias", "seg_head.weight"} <= set(names)


def test_model_config_section() -> None:
    assert section(ModelConfig, {"width": 16, "depth": 4}, "model") == ModelConfig(width=16, depth=4)
    with pytest.raises(ConfigError, match="model.widht: extra inputs"):
        section(ModelConfig, {"widht": 8}, "model")
    with pytest.raises(ConfigError, match="model.depth"):
        section(ModelConfig, {"depth": 0}, "model")


def test_soft_dice_perfect_and_wrong() -> None:
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2] = 1
    good = (target * 2 - 1) * 50
    assert soft_dice_loss(good, target) < 1e-4
    assert soft_dice_loss(-good, target) > 0.99


def test_codeletion_masked_unless_idh_mutant() -> None:
    labels = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 0], [NAN, 0, 0, 0], [1, NAN, 0, 0]])
    assert label_masks(labels)["codeletion"].tolist() == [True, False, False, False]


def _outputs(b: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    out = {t: torch.randn(b, requires_grad=True) for t in ("idh", "codeletion", "mgmt")}
    out["grade"] = torch.randn(b, 3, requires_grad=True)
    out["seg"] = torch.randn(b, 1, 4, 4, 4, requires_grad=True)
    return out


def test_missing_labels_give_exactly_zero_gradient() -> None:
    out = _outputs(3)
    labels = torch.tensor([[1, NAN, NAN, 2], [NAN, NAN, 1, NAN], [0, 1, 0, 0]])  # row 2: codeletion but idh 0
    has_seg = torch.tensor([True, False, False])
    tumour = torch.full((3, 1, 4, 4, 4), NAN)  # NaN where no mask: must not leak
    tumour[0] = 1.0
    total, terms = MultiTaskLoss()(out, tumour, has_seg, labels)
    assert set(terms) == {"seg", "idh", "mgmt", "grade"}  # no codeletion label usable
    total.backward()
    assert torch.isfinite(total)
    assert out["codeletion"].grad is None  # head fully masked: no gradient at all
    assert out["idh"].grad[1] == 0 and out["idh"].grad[0] != 0
    assert out["mgmt"].grad[0] == 0 and out["mgmt"].grad[1] != 0
    assert (out["grade"].grad[1] == 0).all() and (out["grade"].grad[0] != 0).any()
    assert (out["seg"].grad[1:] == 0).all() and (out["seg"].grad[0] != 0).any()


def test_missing_head_parameters_get_no_gradient(model: torch.nn.Module) -> None:
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(2, 4, 16, 16, 16))
    labels = torch.tensor([[1, NAN, NAN, 0], [0, NAN, NAN, NAN]])
    total, _ = MultiTaskLoss()(out, torch.zeros(2, 1, 16, 16, 16), torch.tensor([False, False]), labels)
    total.backward()
    for task in ("codeletion", "mgmt"):
        for p in model.heads[task].parameters():
            assert p.grad is None or bool((p.grad == 0).all())
    assert any(p.grad is not None and bool((p.grad != 0).any()) for p in model.heads["idh"].parameters())
    model.zero_grad(set_to_none=True)


def test_no_labels_at_all_gives_none() -> None:
    out = _outputs(2)
    labels = torch.full((2, 4), NAN)
    total, terms = MultiTaskLoss()(out, torch.zeros(2, 1, 4, 4, 4), torch.tensor([False, False]), labels)
    assert total is None and terms == {}


def test_task_weights() -> None:
    out = _outputs(2)
    labels = torch.tensor([[1, NAN, 0, 1], [0, NAN, 1, 2]])
    args = (out, torch.zeros(2, 1, 4, 4, 4), torch.tensor([False, False]), labels)
    _, terms = MultiTaskLoss()(*args)
    total, _ = MultiTaskLoss(TaskWeights(idh=2.0, mgmt=0.0))(*args)
    assert torch.allclose(total, 2 * terms["idh"] + terms["grade"])
    with pytest.raises(ConfigError, match="train.task_weights.survival"):
        section(TaskWeights, {"survival": 1.0}, "train.task_weights")
