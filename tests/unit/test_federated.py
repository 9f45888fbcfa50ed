"""Exchange format, update checks, aggregation strategies, model selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fedglioma.errors import ConfigError, UpdateRejected
from fedglioma.federated import (
    FedAdam,
    FedAvg,
    FederatedConfig,
    FedYogi,
    Median,
    MemoryUpdate,
    TrimmedMean,
    aggregate_files,
    load_params,
    load_update,
    make_strategy,
    save_params,
    select_model,
    sha256_file,
    split_params,
)
from fedglioma.federated.exchange import spec_of
from fedglioma.settings import section

SPEC_TENSORS = {"a.weight": torch.zeros(2, 3), "a.norm.weight": torch.ones(3), "b": torch.zeros(4)}


def _mem(site: str, n: int, **tensors: torch.Tensor) -> MemoryUpdate:
    return MemoryUpdate(site=site, round=1, n_train=n, tensors=dict(tensors))


def _write_update(folder: Path, site: str, n: int, tensors: dict[str, torch.Tensor], rnd: int = 1,
                  prev: Path | None = None) -> Path:
    """An update of ``site``, trained from the global model ``prev`` (its sha256 in the sidecar)."""
    p = folder / f"site-{site}" / "update.safetensors"
    side = {"kind": "update", "round": rnd, "site": site, "n_train": n}
    if prev is not None:
        side["global_sha256"] = json.loads(prev.with_suffix(".json").read_text())["sha256"]
    save_params(p, tensors, side)
    return p


# ------------------------------------------------------------------------------------------------ exchange


def test_save_params_is_reproducible_and_verified(tmp_path: Path) -> None:
    t = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.ones(2)}
    side = {"kind": "update", "round": 3, "site": "A", "n_train": 5, "loss": math.nan}
    s1 = save_params(tmp_path / "a.safetensors", t, side)
    s2 = save_params(tmp_path / "b.safetensors", t, side)
    assert s1["sha256"] == s2["sha256"] == sha256_file(tmp_path / "a.safetensors")
    written = json.loads((tmp_path / "a.json").read_text())
    assert written["round"] == 3 and written["loss"] is None and written["numel"] == 8
    tensors, sc = load_params(tmp_path / "a.safetensors")
    assert torch.equal(tensors["x"], t["x"]) and sc["site"] == "A"


def test_empty_params_file(tmp_path: Path) -> None:
    save_params(tmp_path / "e.safetensors", {}, {"kind": "local", "round": 1, "site": "A"})
    assert load_params(tmp_path / "e.safetensors")[0] == {}


# ------------------------------------------------------------------------------------------------ strategies


def test_fedavg_is_sample_weighted_mean() -> None:
    torch.manual_seed(0)
    prev = {"w": torch.zeros(3, 4), "b": torch.zeros(5)}
    ups = [_mem(s, n, w=torch.randn(3, 4), b=torch.randn(5)) for s, n in (("A", 10), ("B", 3), ("C", 1))]
    new, state = FedAvg().aggregate(prev, iter(ups), {})
    for k in prev:
        expect = sum(u.n_train * u.tensors[k].double() for u in ups) / 14
        torch.testing.assert_close(new[k], expect.float(), rtol=1e-6, atol=1e-7)
        assert new[k].dtype == torch.float32
    assert state == {}


def test_duplicate_site_rejected() -> None:
    prev = {"w": torch.zeros(2)}
    with pytest.raises(UpdateRejected, match="site A, round 1"):
        FedAvg().aggregate(prev, iter([_mem("A", 1, w=torch.ones(2)), _mem("A", 2, w=torch.ones(2))]), {})


def test_median_odd_and_even() -> None:
    prev = {"w": torch.zeros(3)}
    vals = [[1.0, 5.0, -1.0], [2.0, 100.0, -2.0], [3.0, 6.0, 0.0]]
    ups = [_mem(f"S{i}", 1 + 100 * i, w=torch.tensor(v)) for i, v in enumerate(vals)]
    new, _ = Median().aggregate(prev, ups, {})
    assert new["w"].tolist() == [2.0, 6.0, -1.0]  # unweighted: n_train is ignored
    ups.append(_mem("S3", 1, w=torch.tensor([4.0, 7.0, 1.0])))
    new, _ = Median().aggregate(prev, ups, {})
    assert new["w"].tolist() == [2.5, 6.5, -0.5]


def test_trimmed_mean() -> None:
    prev = {"w": torch.zeros(2)}
    vals = [[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [1000.0, -1000.0]]
    ups = [_mem(f"S{i}", 1, w=torch.tensor(v)) for i, v in enumerate(vals)]
    new, _ = TrimmedMean(0.2).aggregate(prev, ups, {})  # drop 1 at each end
    assert new["w"].tolist() == [2.0, 1.0]
    new, _ = TrimmedMean(0.0).aggregate(prev, ups, {})
    torch.testing.assert_close(new["w"], torch.tensor([201.2, -199.2]))
    with pytest.raises(ConfigError):
        TrimmedMean(0.5)


@pytest.mark.parametrize("cls", [FedAdam, FedYogi])
def test_fedopt_steps(cls: type) -> None:
    prev = {"w": torch.tensor([1.0, 1.0])}
    ups = [_mem("A", 1, w=torch.tensor([2.0, 1.0])), _mem("B", 3, w=torch.tensor([0.0, 1.0]))]
    strat = cls(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    new, state = strat.aggregate(prev, ups, {})
    delta = torch.tensor([0.5 - 1.0, 0.0])
    m = 0.1 * delta
    v = 0.01 * delta**2  # Adam and Yogi agree from v = 0
    torch.testing.assert_close(new["w"], prev["w"] + 0.1 * m / (v.sqrt() + 1e-3))
    torch.testing.assert_close(state["m.w"], m)
    torch.testing.assert_close(state["v.w"], v)
    new2, state2 = strat.aggregate(new, ups, state)
    assert torch.isfinite(new2["w"]).all() and set(state2) == {"m.w", "v.w"}


def test_make_strategy_by_name() -> None:
    for name in ("fedavg", "fedprox", "fedadam", "fedyogi", "median", "trimmed_mean"):
        assert make_strategy(FederatedConfig(strategy=name)).name == name
    with pytest.raises(ConfigError, match="federated.strategy"):
        section(FederatedConfig, {"strategy": "krum"}, "federated")
    with pytest.raises(ConfigError, match="federated.rounds_: extra inputs are not permitted"):
        section(FederatedConfig, {"strategy": "fedavg", "rounds_": 3}, "federated")


# ------------------------------------------------------------------------------------------------ files


@pytest.fixture
def prev_global(tmp_path: Path) -> Path:
    p = tmp_path / "round-0" / "global.safetensors"
    save_params(p, SPEC_TENSORS, {"kind": "global", "round": 0})
    return p


def _good(tmp_path: Path, site: str = "A", n: int = 2, value: float = 1.0) -> dict[str, torch.Tensor]:
    return {"a.weight": torch.full((2, 3), value), "b": torch.full((4,), value)}


def test_aggregate_files_keeps_site_local_params(tmp_path: Path, prev_global: Path) -> None:
    pats = ("*.norm*",)
    u1 = _write_update(tmp_path, "A", 1, _good(tmp_path, value=1.0), prev=prev_global)
    u2 = _write_update(tmp_path, "B", 3, _good(tmp_path, value=5.0), prev=prev_global)
    out = tmp_path / "round-1" / "global.safetensors"
    side = aggregate_files(
        FedAvg(), [u1, u2], prev_global, out, 1, None, tmp_path / "state.safetensors", site_local_patterns=pats
    )
    new, _ = load_params(out)
    assert set(new) == set(SPEC_TENSORS)
    assert torch.equal(new["a.norm.weight"], SPEC_TENSORS["a.norm.weight"])
    torch.testing.assert_close(new["b"], torch.full((4,), 4.0))
    assert side["n_train"] == 4 and [s["site"] for s in side["sites"]] == ["A", "B"]
    assert load_params(tmp_path / "state.safetensors")[0] == {}


def test_aggregate_fedadam_state_roundtrip(tmp_path: Path, prev_global: Path) -> None:
    strat = FedAdam(0.1, 0.9, 0.99, 1e-3)
    u = _write_update(tmp_path, "A", 1, _good(tmp_path), rnd=1, prev=prev_global)
    g1, s1 = tmp_path / "g1.safetensors", tmp_path / "s1.safetensors"
    aggregate_files(strat, [u], prev_global, g1, 1, None, s1, site_local_patterns=("*.norm*",))
    state = load_file(str(s1))
    assert set(state) == {"m.a.weight", "v.a.weight", "m.b", "v.b"}
    u2 = _write_update(tmp_path / "r2", "A", 1, _good(tmp_path), rnd=2, prev=g1)
    aggregate_files(
        strat,
        [u2],
        g1,
        tmp_path / "g2.safetensors",
        2,
        s1,
        tmp_path / "s2.safetensors",
        site_local_patterns=("*.norm*",),
    )
    assert load_params(tmp_path / "g2.safetensors")[0]["b"][0] > load_params(g1)[0]["b"][0]


def _expected() -> dict:
    shared, _ = split_params(SPEC_TENSORS, ["*.norm*"])
    return spec_of(shared)


def _corrupt_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}
    good = _good(tmp_path)
    cases["extra key"] = (_write_update(tmp_path / "1", "A", 2, {**good, "a.norm.weight": torch.ones(3)}), "unexpected")
    cases["missing key"] = (_write_update(tmp_path / "2", "B", 2, {"a.weight": good["a.weight"]}), "missing")
    cases["shape"] = (_write_update(tmp_path / "3", "C", 2, {**good, "b": torch.zeros(5)}), "shape")
    cases["dtype"] = (
        _write_update(tmp_path / "4", "D", 2, {**good, "b": torch.zeros(4, dtype=torch.float64)}),
        "dtype",
    )
    cases["nan"] = (_write_update(tmp_path / "5", "E", 2, {**good, "b": torch.tensor([0, math.nan, 0, 0])}), "NaN")
    cases["inf"] = (_write_update(tmp_path / "6", "F", 2, {**good, "a.weight": torch.full((2, 3), math.inf)}), "Inf")
    p = _write_update(tmp_path / "7", "G", 2, good)
    save_file({k: v + 1 for k, v in good.items()}, str(p))  # replaced after the sidecar was written
    cases["sha"] = (p, "sha256")
    p = _write_update(tmp_path / "8", "H", 2, good)
    p.with_suffix(".json").write_text("{not json")
    cases["broken sidecar"] = (p, "sidecar")
    p = _write_update(tmp_path / "9", "I", 2, good)
    p.with_suffix(".json").unlink()
    cases["no sidecar"] = (p, "sidecar")
    cases["wrong round"] = (_write_update(tmp_path / "10", "J", 2, good, rnd=2), "round 2")
    cases["n_train"] = (_write_update(tmp_path / "11", "K", 0, good), "n_train")
    return cases


def test_bad_updates_rejected_with_site_and_round(tmp_path: Path) -> None:
    for name, (path, why) in _corrupt_cases(tmp_path).items():
        site = path.parent.name.removeprefix("site-")
        with pytest.raises(UpdateRejected) as exc:
            load_update(path, expected=_expected(), round=1)
        msg = str(exc.value)
        assert f"site {site}" in msg and "round 1" in msg and why in msg, (name, msg)


def test_bad_update_left_out_above_quorum_and_fails_below(tmp_path: Path, prev_global: Path) -> None:
    ups = [_write_update(tmp_path / s, s, 2, _good(tmp_path, value=v), prev=prev_global)
           for s, v in (("A", 1.0), ("B", 2.0), ("C", 3.0))]
    bad = _write_update(tmp_path / "x", "D", 2, {**_good(tmp_path), "b": torch.tensor([math.nan] * 4)},
                        prev=prev_global)
    out = tmp_path / "g1.safetensors"
    for strat in (FedAvg(), Median()):
        side = aggregate_files(strat, [*ups, bad], prev_global, out, 1, site_local_patterns=("*.norm*",),
                               sites=["A", "B", "C", "D"], min_sites=3)
        assert [s["site"] for s in side["sites"]] == ["A", "B", "C"] and side["quorum"] == 3
        (e,) = side["excluded"]
        assert e["site"] == "D" and e["stage"] == "refused" and "NaN" in e["reason"]
        assert load_params(out)[0]["b"].tolist() == [2.0] * 4
    out.unlink()
    with pytest.raises(UpdateRejected, match=r"3 of 4 sites .* below the quorum of 4 .* site D \(refused\)"):
        aggregate_files(FedAvg(), [*ups, bad], prev_global, out, 1, site_local_patterns=("*.norm*",),
                        sites=["A", "B", "C", "D"], min_sites=4)
    assert not out.exists()


def test_good_update_loads(tmp_path: Path) -> None:
    p = _write_update(tmp_path, "A", 2, _good(tmp_path))
    tensors, side = load_update(p, expected=_expected(), round=1)
    assert side["n_train"] == 2 and set(tensors) == {"a.weight", "b"}


# ------------------------------------------------------------------------------------------------ selection


def _counts(y: list[int], p: list[float]) -> dict:
    from fedglioma.train.metrics import threshold_counts

    return threshold_counts(y, p)


def _validation(folder: Path, site: str, rnd: int, auc: float, n: int, y: list[int], p: list[float]) -> Path:
    from fedglioma.train.metrics import THRESHOLD_GRID

    doc = {
        "kind": "validation",
        "round": rnd,
        "site": site,
        "n_val": n,
        "metrics": {"loss": 1.0, "dice_mean": 0.5, "n_seg": n, "auc": {"idh": auc}, "n_auc": {"idh": n}},
        "thresholds": {"grid": list(THRESHOLD_GRID), "tasks": {"idh": _counts(y, p)}},
    }
    path = folder / f"val-{site}-{rnd}.json"
    path.write_text(json.dumps(doc))
    return path


def test_select_model_pools_sites(tmp_path: Path) -> None:
    y = [0, 1, 0, 1, 0, 1]
    paths = [
        _validation(tmp_path, "A", 1, 0.6, 6, y, [0.2, 0.3, 0.6, 0.5, 0.4, 0.45]),
        _validation(tmp_path, "B", 1, 0.6, 6, y, [0.2, 0.8, 0.3, 0.2, 0.9, 0.6]),
        _validation(tmp_path, "A", 2, 0.9, 6, y, [0.1, 0.7, 0.3, 0.8, 0.2, 0.9]),
        _validation(tmp_path, "B", 2, 0.5, 6, y, [0.2, 0.6, 0.3, 0.75, 0.4, 0.65]),
    ]
    final = select_model(paths, tmp_path / "final.json", model_template="round-{round}/global.safetensors")
    assert final["round"] == 2 and "auc.idh" in final["score_metrics"]
    assert final["model"] == "round-2/global.safetensors"
    # Pooled round 2: positives 0.6..0.9, negatives 0.1..0.4 -> J = 1 on (0.4, 0.6]; closest to 0.5.
    th = final["thresholds"]["idh"]
    assert th["n_pos"] == 6 and th["n_neg"] == 6
    assert th["threshold"] == pytest.approx(0.5) and th["youden"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "final.json").read_text())["round"] == 2


def test_round_score_is_the_pooled_auc_not_a_mean_of_tiny_site_aucs(tmp_path: Path) -> None:
    """Each site validates on two subjects (AUC 0 or 1 per site). Round 1 has the higher mean of per-site AUCs
    (the old score) but ranks the pooled subjects worse; the pooled ROC of the summed counts picks round 2."""
    from sklearn.metrics import roc_auc_score

    from fedglioma.federated.select import pooled_auc

    y = [0, 1]
    r1 = {"A": [0.1, 0.2], "B": [0.6, 0.7], "C": [0.35, 0.4], "D": [0.8, 0.3]}  # per-site AUCs 1, 1, 1, 0
    r2 = {"A": [0.2, 0.7], "B": [0.3, 0.8], "C": [0.4, 0.6], "D": [0.5, 0.45]}  # per-site AUCs 1, 1, 1, 0
    paths = [_validation(tmp_path, s, 1, 1.0 if s != "D" else 0.0, 2, y, p) for s, p in r1.items()]
    paths += [_validation(tmp_path, s, 2, 1.0 if s != "D" else 0.0, 2, y, p) for s, p in r2.items()]
    final = select_model(paths, tmp_path / "final.json")
    pooled = {r: roc_auc_score(y * 4, sum(d.values(), [])) for r, d in ((1, r1), (2, r2))}
    assert pooled[2] > pooled[1]
    assert final["round"] == 2
    for r in (1, 2):
        assert final["rounds"][str(r)]["metrics"]["auc.idh"] == pytest.approx(pooled[r])
    counts = _counts([0, 1, 1, 0, 1], [0.1, 0.3, 0.9, 0.3, 0.5])
    assert pooled_auc(counts) == pytest.approx(roc_auc_score([0, 1, 1, 0, 1], [0.1, 0.3, 0.9, 0.3, 0.5]))


def test_segmentation_and_classification_weigh_half_each(tmp_path: Path) -> None:
    """Round 1: two markers separate perfectly, Dice 0.5; round 2: AUCs 7/9, Dice 0.9. A plain mean of the
    three metrics (the old score) picks round 1 (0.83 vs 0.82); half Dice, half mean AUC picks round 2."""
    from fedglioma.federated.select import round_score
    from fedglioma.train.metrics import THRESHOLD_GRID

    y = [0, 0, 0, 1, 1, 1]
    rounds = {1: (0.5, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), 2: (0.9, [0.1, 0.2, 0.8, 0.3, 0.7, 0.9])}
    paths = []
    for rnd, (dice, p) in rounds.items():
        doc = {"kind": "validation", "round": rnd, "site": "A", "n_val": 6,
               "metrics": {"loss": 1.0, "dice_mean": dice, "n_seg": 6},
               "thresholds": {"grid": list(THRESHOLD_GRID), "tasks": {t: _counts(y, p) for t in ("idh", "mgmt")}}}
        paths.append(tmp_path / f"val-{rnd}.json")
        paths[-1].write_text(json.dumps(doc))
    final = select_model(paths, tmp_path / "final.json")
    aucs = {r: final["rounds"][str(r)]["metrics"]["auc.idh"] for r in rounds}
    assert aucs[1] == pytest.approx(1.0) and aucs[2] == pytest.approx(7 / 9)
    assert (0.5 + 2 * aucs[1]) / 3 > (0.9 + 2 * aucs[2]) / 3  # the old rule would keep round 1
    assert final["round"] == 2 and final["score"] == pytest.approx((0.9 + 7 / 9) / 2)
    assert final["score_rule"].startswith("mean of the pooled Dice")
    assert round_score({"auc.idh": 0.7}) == pytest.approx(0.7) and round_score({"dice_mean": 0.6}) == 0.6


def test_a_marker_with_too_few_of_a_class_stays_out_of_the_score(tmp_path: Path) -> None:
    from fedglioma.federated.select import MIN_CLASS_COUNT

    y = [0] * 5 + [1] * (MIN_CLASS_COUNT - 1)
    p = [0.1] * 5 + [0.9] * (MIN_CLASS_COUNT - 1)
    paths = [_validation(tmp_path, "A", r, 1.0, len(y), y, p) for r in (1, 2)]
    final = select_model(paths, tmp_path / "final.json")
    assert final["score_metrics"] == ["dice_mean"]
    assert final["thresholds"]["idh"]["threshold"] is not None  # thresholds still come from the counts


def test_a_task_lacking_a_class_gets_no_threshold_and_says_why(tmp_path: Path) -> None:
    paths = [_validation(tmp_path, s, 1, 0.5, 3, [1, 1, 1], [0.2, 0.6, 0.9]) for s in ("A", "B")]
    th = select_model(paths, tmp_path / "final.json")["thresholds"]["idh"]
    assert th["threshold"] is None and "6 positive and 0 negative" in th["reason"]


def test_youden_resolves_saturated_probabilities(tmp_path: Path) -> None:
    """Positives at 0.9995+, negatives at 0.995-0.999: on a 0.01 grid only 0.99 and 1.0 lie above 0.99, so no
    threshold separates them (J = 0); the package's grid does (J = 1)."""
    from fedglioma.federated.select import youden
    from fedglioma.train.metrics import THRESHOLD_GRID, threshold_counts

    y = [0, 0, 0, 1, 1, 1]
    p = [0.995, 0.997, 0.999, 0.9995, 0.9998, 0.99995]
    old_grid = tuple(round(i / 100, 2) for i in range(101))
    assert youden(threshold_counts(y, p, old_grid), old_grid)["youden"] == pytest.approx(0.0)
    th = youden(threshold_counts(y, p), THRESHOLD_GRID)
    assert th["youden"] == pytest.approx(1.0) and 0.999 < th["threshold"] <= 0.9995


def test_cli_aggregate(tmp_path: Path, prev_global: Path) -> None:
    """`fedglioma federated aggregate` (the aggregate rule's step) with --config and a --set override."""
    from fedglioma.cli import main

    cfg = tmp_path / "config.yaml"
    cfg.write_text("sites: s.tsv\nfederated:\n  strategy: median\n  site_local_patterns: ['*.norm*']\n")
    ups = [_write_update(tmp_path, s, 1, _good(tmp_path, value=v), prev=prev_global)
           for s, v in (("A", 1.0), ("B", 2.0), ("C", 9.0))]
    out = tmp_path / "g1.safetensors"

    def argv(*extra: str) -> list[str]:
        return ["federated", "aggregate", "--config", str(cfg), *extra, "--round", "1", "--previous", str(prev_global),
                "--model", str(out), "--meta", str(out.with_suffix(".json")),
                "--server-state", str(tmp_path / "s1.safetensors"), "--server-state-meta", str(tmp_path / "s1.json"),
                "--updates", *map(str, ups), "--update-metas", *(str(u.with_suffix(".json")) for u in ups)]

    assert main(argv()) == 0
    assert load_params(out)[0]["b"].tolist() == [2.0] * 4
    # norm weights now shared: the updates lack them
    assert main(argv("--set", "federated.strategy=fedavg", "--set", "federated.site_local_patterns=[]")) == 1
