"""One definition per endpoint: 1p/19q counts in the same population in loss, validation, external metrics and
the paired comparison (issue 14, item 1)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedglioma.endpoints import Endpoints, restrict
from fedglioma.errors import ConfigError, InputError
from fedglioma.evaluate.compare import compare_models, paired_auc_tests
from fedglioma.evaluate.site import marker_targets, merge_site_table, summarise_site
from fedglioma.model import label_masks
from fedglioma.settings import section
from fedglioma.train.local import evaluate_dataset

# Four IDH-mutant subjects (two codeleted, scored BELOW the two intact ones) and four IDH-wildtype subjects
# whose clinical table says "intact" (scored low: easy negatives for a head that never trained on them).
IDH = [1, 1, 1, 1, 0, 0, 0, 0]
COD = [1, 1, 0, 0, 0, 0, 0, 0]
P_COD = [0.5, 0.6, 0.7, 0.8, 0.1, 0.15, 0.2, 0.25]


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    subjects = [f"s{i}" for i in range(8)]
    labels = pd.DataFrame({"subject": subjects, "idh": IDH, "codeletion": COD, "mgmt": [0, 1] * 4, "grade": [4] * 8})
    preds = pd.DataFrame(
        {
            "subject": subjects,
            "p_idh": np.linspace(0.1, 0.9, 8),
            "p_codeletion": P_COD,
            "p_mgmt": np.linspace(0.2, 0.8, 8),
            "p_grade2": 0.2,
            "p_grade3": 0.2,
            "p_grade4": 0.6,
        }
    )
    return preds, labels


def test_external_auc_counts_codeletion_within_idh_mutant_and_shows_the_other_population() -> None:
    preds, labels = _tables()
    res = summarise_site(preds, labels, None, None, n_boot=200)["markers"]["codeletion"]
    assert res["population"] == "idh_mutant" and res["n"] == 4
    assert res["auc"] == pytest.approx(0.0)  # the truth within IDH-mutant: the head ranks them backwards
    other = res["other_population"]
    assert other["population"] == "all" and other["n"] == 8
    assert other["auc"] == pytest.approx(8 / 12)  # what the old evaluation reported as THE 1p/19q AUC


def test_all_subjects_population_is_a_setting() -> None:
    preds, labels = _tables()
    res = summarise_site(preds, labels, None, None, n_boot=200, endpoints=Endpoints(codeletion="all"))
    cod = res["markers"]["codeletion"]
    assert cod["auc"] == pytest.approx(8 / 12) and cod["n"] == 8 and cod["other_population"]["n"] == 4
    assert res["endpoints"] == {"codeletion": "all"}


@pytest.mark.parametrize("population", ["idh_mutant", "all"])
def test_loss_validation_and_external_metrics_count_the_same_subjects(population: str) -> None:
    """The training loss's mask, the validation counts and the external target select the same rows."""
    endpoints = Endpoints(codeletion=population)
    preds, labels = _tables()
    labels.loc[7, "codeletion"] = np.nan  # a missing label counts nowhere
    labels.loc[3, "idh"] = np.nan  # an unknown IDH status: outside the IDH-mutant population
    table, _ = merge_site_table(preds, labels)
    y_ext, _ = marker_targets(table, "codeletion", endpoints)
    lab = torch.tensor(labels[["idh", "codeletion", "mgmt", "grade"]].to_numpy(dtype=np.float32))
    lab[:, 3] = 2  # grade as class index
    in_loss = label_masks(lab, endpoints)["codeletion"].numpy()
    assert np.array_equal(in_loss, np.isfinite(y_ext))
    expected = 3 if population == "idh_mutant" else 7
    assert int(in_loss.sum()) == expected


def test_validation_counts_follow_the_endpoint() -> None:
    """evaluate_dataset (site validation) puts exactly the endpoint's subjects into the AUC and the counts."""

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            i = int(x.flatten()[0])
            logit = torch.logit(torch.tensor([P_COD[i]]))
            return {"seg": torch.zeros(1, 1, 2, 2, 2), "idh": logit, "codeletion": logit, "mgmt": logit,
                    "grade": torch.zeros(1, 3)}

    class Data:
        site = "A"

        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> dict:
            return {"image": torch.full((4, 2, 2, 2), float(i)), "tumour": torch.zeros(1, 2, 2, 2),
                    "has_seg": torch.tensor(False), "subject": f"s{i}",
                    "labels": torch.tensor([IDH[i], COD[i], 0.0, 2.0])}

    from fedglioma.model import MultiTaskLoss

    for population, n, auc in (("idh_mutant", 4, 0.0), ("all", 8, 8 / 12)):
        loss = MultiTaskLoss(None, Endpoints(codeletion=population))
        res = evaluate_dataset(Fixed(), Data(), loss, torch.device("cpu"), with_thresholds=True)  # type: ignore[arg-type]
        assert res["metrics"]["n_auc"]["codeletion"] == n
        assert res["metrics"]["auc"]["codeletion"] == pytest.approx(auc)
        c = res["thresholds"]["tasks"]["codeletion"]
        assert c["tp"][0] + c["fn"][0] + c["fp"][0] + c["tn"][0] == n
        assert res["endpoints"] == {"codeletion": population}


def test_paired_comparison_uses_the_endpoint() -> None:
    preds, labels = _tables()
    other = preds.assign(p_codeletion=np.linspace(0.9, 0.1, 8))
    tests = paired_auc_tests({"federated": preds, "centralized": other}, labels, n_boot=200)
    assert tests["centralized"]["codeletion"]["n"] == 4
    tests = paired_auc_tests({"federated": preds, "centralized": other}, labels, n_boot=200,
                             endpoints=Endpoints(codeletion="all"))
    assert tests["centralized"]["codeletion"]["n"] == 8


def test_comparison_refuses_metrics_of_another_endpoint_definition() -> None:
    preds, labels = _tables()
    fed = summarise_site(preds, labels, None, None, n_boot=50)
    cen = summarise_site(preds, labels, None, None, n_boot=50, endpoints=Endpoints(codeletion="all"))
    with pytest.raises(InputError, match="endpoints"):
        compare_models({"federated": fed, "centralized": cen})


def test_endpoints_config() -> None:
    assert section(Endpoints, None, "endpoints") == Endpoints(codeletion="idh_mutant")
    with pytest.raises(ConfigError, match="endpoints.codeletion"):
        section(Endpoints, {"codeletion": "mutant_only"}, "endpoints")
    with pytest.raises(ConfigError, match="endpoints.codel: extra inputs are not permitted"):
        section(Endpoints, {"codel": "all"}, "endpoints")
    assert restrict("idh", np.array([True, False]), np.array([0.0, 1.0]), Endpoints()).tolist() == [True, False]
