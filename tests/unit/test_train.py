"""Site data, augmentation, local training (determinism, FedProx, site-local parameters), validation, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedglioma.errors import ConfigError, InputError
from fedglioma.federated import FedAvg, FederatedConfig, aggregate_files, load_params, sha256_file
from fedglioma.model import ModelConfig
from fedglioma.settings import load_config
from fedglioma.train import (
    AugmentConfig,
    SiteDataset,
    TrainConfig,
    collate,
    init_global,
    load_model,
    local_train,
    predict,
    read_labels,
    split_subjects,
    validate,
)
from fedglioma.train.augment import augment_batch
from fedglioma.train.data import subject_of
from fedglioma.train.metrics import THRESHOLD_GRID
from fedglioma.train.seeding import generator
from tests.fixtures.tiny_site import make_tiny_site

MODEL = ModelConfig(width=4, depth=2, dropout=0.1)
TRAIN = TrainConfig(epochs_per_round=2, batch_size=2, val_fraction=0.3, seed=7)
FEDAVG = FederatedConfig(strategy="fedavg")
FEDBN = FederatedConfig(strategy="fedavg", site_local_patterns=["*.norm*"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    return make_tiny_site(tmp_path_factory.mktemp("site"), n_subjects=6, size=16)


@pytest.fixture(scope="module")
def global0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("round-0") / "global.safetensors"
    init_global(p, MODEL, seed=1)
    return p


def _train(site, global0, out: Path, *, fed=FEDAVG, train=TRAIN, **kw) -> dict:
    files, labels = site
    return local_train(
        global0,
        files,
        labels,
        out,
        site="A",
        round=1,
        train_cfg=train,
        model_cfg=MODEL,
        strategy_cfg=fed,
        threads=1,
        **kw,
    )


# ------------------------------------------------------------------------------------------------ data


def test_read_labels(tmp_path: Path) -> None:
    p = tmp_path / "labels.tsv"
    p.write_text("subject\tidh\tcodeletion\tmgmt\tgrade\textra\n001\t1\t\t0\t4\tx\nsub-002\t0.0\t\t\t2\t\n")
    lab = read_labels(p, site="A")
    np.testing.assert_array_equal(lab["001"], np.array([1, np.nan, 0, 2], dtype=np.float32))
    np.testing.assert_array_equal(lab["002"], np.array([0, np.nan, np.nan, 0], dtype=np.float32))
    p.write_text("subject\tidh\tcodeletion\tmgmt\tgrade\n001\t1\t\t0\t5\n")
    with pytest.raises(InputError, match="site A, subject 001.*grade"):
        read_labels(p, site="A")
    p.write_text("subject\tidh\tmgmt\tgrade\n001\t1\t0\t4\n")
    with pytest.raises(InputError, match="codeletion"):
        read_labels(p, site="A")


def test_split_is_deterministic_and_stable() -> None:
    subs = [f"{i:03d}" for i in range(40)]
    train, val = split_subjects(subs, 0.25, seed=3)
    assert (train, val) == split_subjects(list(reversed(subs)), 0.25, seed=3)
    assert set(train) | set(val) == set(subs) and not set(train) & set(val)
    assert 4 <= len(val) <= 18
    train2, val2 = split_subjects([*subs, "new"], 0.25, seed=3)
    assert set(val) <= set(val2) and set(train) <= set(train2)  # adding a subject moves nobody
    assert split_subjects(["only"], 0.99, seed=0) == (["only"], [])
    t, v = split_subjects(["a", "b"], 0.999, seed=0)
    assert len(t) == 1 and len(v) == 1


def test_dataset_items(site) -> None:
    files, labels = site
    ds = SiteDataset(files, labels, site="A")
    assert len(ds) == 6
    item = ds[2]  # subject 002 has no mask
    assert item["image"].shape == (4, 16, 16, 16) and item["tumour"].shape == (1, 16, 16, 16)
    assert not bool(item["has_seg"]) and item["subject"] == "002"
    assert bool(ds[0]["has_seg"]) and ds[0]["tumour"].sum() > 0
    tr = SiteDataset(files, labels, site="A", part="train", val_fraction=0.3, seed=7)
    va = SiteDataset(files, labels, site="A", part="val", val_fraction=0.3, seed=7)
    assert sorted(tr.subjects + va.subjects) == ds.subjects and len(tr) >= 1
    with pytest.raises(InputError, match="sub-\\{subject\\}_train.npz"):
        SiteDataset([files[0].with_name("x.npz")], labels, site="A")


def test_augmentation_deterministic_and_binary(site) -> None:
    files, labels = site
    ds = SiteDataset(files, labels, site="A")
    batch = collate([ds[0], ds[1], ds[3]])
    cfg = AugmentConfig(p_affine=1.0, rotate_deg=15, scale=0.15)
    a = augment_batch(batch, cfg, generator(1))
    b = augment_batch(batch, cfg, generator(1))
    c = augment_batch(batch, cfg, generator(2))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["tumour"], b["tumour"])
    assert not torch.equal(a["image"], c["image"])
    assert a["image"].shape == batch["image"].shape
    assert set(a["tumour"].unique().tolist()) <= {0.0, 1.0} and a["tumour"].sum() > 0
    assert augment_batch(batch, AugmentConfig(enabled=False), generator(1)) is batch


# ------------------------------------------------------------------------------------------------ training


def test_local_train_is_deterministic(site, global0: Path, tmp_path: Path) -> None:
    s1 = _train(site, global0, tmp_path / "a" / "update.safetensors")
    s2 = _train(site, global0, tmp_path / "b" / "update.safetensors")
    assert s1["sha256"] == s2["sha256"]
    assert (tmp_path / "a/update.safetensors").read_bytes() == (tmp_path / "b/update.safetensors").read_bytes()
    assert s1["train_losses"] == s2["train_losses"] and len(s1["train_losses"]) == 2
    assert s1["round"] == 1 and s1["site"] == "A" and s1["n_train"] + s1["n_val"] == 6
    assert s1["validation"]["n_seg"] >= 0 and "auc" in s1["validation"]
    # The update is a real change.
    upd, _ = load_params(tmp_path / "a" / "update.safetensors")
    g, _ = load_params(global0)
    assert any(not torch.equal(upd[k], g[k]) for k in upd)


def test_fedprox_mu0_equals_fedavg(site, global0: Path, tmp_path: Path) -> None:
    s_avg = _train(site, global0, tmp_path / "avg" / "update.safetensors", fed=FEDAVG)
    prox0 = FederatedConfig(strategy="fedprox", mu=0.0)
    s_p0 = _train(site, global0, tmp_path / "p0" / "update.safetensors", fed=prox0)
    assert s_avg["sha256"] == s_p0["sha256"]
    prox = FederatedConfig(strategy="fedprox", mu=1.0)
    s_p = _train(site, global0, tmp_path / "p1" / "update.safetensors", fed=prox)
    assert s_p["sha256"] != s_avg["sha256"]
    assert all("prox" in t for t in s_p["train_loss_terms"])


def test_site_local_params_never_in_update(site, global0: Path, tmp_path: Path) -> None:
    upd = tmp_path / "r1" / "update.safetensors"
    loc = tmp_path / "r1" / "local.safetensors"
    _train(site, global0, upd, fed=FEDBN, local_out=loc)
    with safe_open(str(upd), "pt") as f:
        names = list(f.keys())
    assert names and not any(".norm" in n for n in names)
    local, side = load_params(loc)
    assert local and all(".norm" in n for n in local) and side["kind"] == "local"
    g, _ = load_params(global0)
    assert set(names) | set(local) == set(g)
    with pytest.raises(ConfigError, match="local_out"):
        _train(site, global0, tmp_path / "x" / "update.safetensors", fed=FEDBN)

    # Round 2: the server aggregates shared keys only; the site overlays its own local parameters.
    g1 = tmp_path / "g1.safetensors"
    aggregate_files(FedAvg(), [upd], global0, g1, 1, site_local_patterns=FEDBN.site_local_patterns)
    files, labels = site
    s2 = local_train(
        g1,
        files,
        labels,
        tmp_path / "r2" / "update.safetensors",
        site="A",
        round=2,
        train_cfg=TRAIN,
        model_cfg=MODEL,
        strategy_cfg=FEDBN,
        local_in=loc,
        local_out=tmp_path / "r2" / "local.safetensors",
    )
    assert s2["round"] == 2
    m = load_model(g1, MODEL, local_in=loc)
    assert torch.equal(m.state_dict()["encoders.0.norm1.weight"], local["encoders.0.norm1.weight"])


def test_overfit_loss_decreases(site, global0: Path, tmp_path: Path) -> None:
    cfg = TRAIN.model_copy(
        update={"epochs_per_round": 15, "lr": 1e-2, "val_fraction": 0.0, "augment": AugmentConfig(enabled=False)}
    )
    side = _train(site, global0, tmp_path / "update.safetensors", train=cfg)
    losses = side["train_losses"]
    seg = [t["seg"] for t in side["train_loss_terms"]]
    assert side["n_train"] == 6 and side["n_val"] == 0
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    assert np.mean(seg[-3:]) < 0.75 * np.mean(seg[:3]), seg


def test_validate_writes_aggregates_only(site, global0: Path, tmp_path: Path) -> None:
    files, labels = site
    out = tmp_path / "val.json"
    doc = validate(global0, files, labels, out, site="A", round=0, train_cfg=TRAIN, model_cfg=MODEL)
    assert json.loads(out.read_text()) == doc
    n = doc["n_val"]
    assert n >= 1
    text = out.read_text()
    assert not any(f'"{s}"' in text for s in ("000", "001", "002", "003", "004", "005"))
    th = doc["thresholds"]
    assert th["grid"] == list(THRESHOLD_GRID) and th["grid"][0] == 0.0 and th["grid"][-1] == 1.0
    for task in ("idh", "codeletion", "mgmt", "grade4"):
        c = th["tasks"][task]
        totals = {c["tp"][i] + c["fp"][i] + c["tn"][i] + c["fn"][i] for i in range(101)}
        assert totals == {doc["metrics"]["n_auc"][task]}
        assert c["fn"][0] == 0 and c["fp"][0] == c["fp"][0] + c["tn"][0]  # t = 0: all positive


def test_predict_and_load_model(site, global0: Path) -> None:
    model = load_model(global0, MODEL)
    image = np.load(site[0][0])["image"][:, :15, :16, :13]
    seg, probs = predict(model, image)
    assert seg.shape == (15, 16, 13) and seg.dtype == np.float32 and 0 <= seg.min() <= seg.max() <= 1
    assert set(probs) == {"idh", "codeletion", "mgmt", "grade"}
    assert math.isclose(sum(probs["grade"]), 1.0, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="width"):
        load_model(global0, ModelConfig(width=8, depth=2))


def test_config_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "model: {width: 4, depth: 2}\n"
        "train: {epochs_per_round: 2, augment: false, task_weights: {seg: 2.0}}\n"
        "federated: {strategy: fedprox, mu: 0.1}\n"
    )
    loaded = load_config(cfg)
    m, t, f = loaded.model, loaded.train, loaded.federated
    assert m.width == 4 and t.epochs_per_round == 2 and not t.augment.enabled
    assert t.task_weights.seg == 2.0 and t.task_weights.idh == 1.0
    assert f.strategy == "fedprox" and f.mu == 0.1
    cfg.write_text("train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=f"{cfg}: train.epochs: extra inputs are not permitted"):
        load_config(cfg)
    cfg.write_text("other: {ignored: true}\n")
    with pytest.raises(ConfigError, match="other: extra inputs are not permitted"):
        load_config(cfg)


def test_cli_round_trip(site, tmp_path: Path) -> None:
    """The training steps as commands (`fedglioma train init|training-set|local|validate`), config from --config."""
    from fedglioma.cli import main

    files, labels = site
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sites: s.tsv\nmodel: {width: 4, depth: 2}\ntrain: {epochs_per_round: 1, seed: 3}\n")
    c = ["--config", str(cfg)]
    g0 = tmp_path / "round-0" / "global.safetensors"
    assert main(["train", "init", *c, "--model", str(g0), "--meta", str(g0.with_suffix(".json"))]) == 0
    assert g0.with_suffix(".json").is_file()
    manifest = tmp_path / "training_set.tsv"
    assert main(["train", "training-set", *c, "--files", *map(str, files), "--qc", str(tmp_path / "qc.tsv"),
                 "--manifest", str(manifest), "--site", "A"]) == 0
    site_args = ["--global-model", str(g0), "--training-set", str(manifest), "--labels", str(labels), "--site", "A",
                 "--round", "1"]
    upd = tmp_path / "round-1" / "site-A" / "update.safetensors"
    local = upd.with_name("local.safetensors")
    assert main(["train", "local", *c, *site_args, "--site-update", str(upd), "--site-update-meta",
                 str(upd.with_suffix(".json")), "--local", str(local), "--local-meta", str(local.with_suffix(".json"))]) == 0
    assert sha256_file(upd) == json.loads(upd.with_suffix(".json").read_text())["sha256"]
    val = tmp_path / "val.json"
    assert main(["train", "validate", *c, *site_args, "--validation", str(val)]) == 0
    assert json.loads(val.read_text())["site"] == "A"


# ------------------------------------------------------------------------------------- baselines (issue 14)


def test_pooled_training_set_is_the_union_of_the_sites_own_training_splits(tmp_path: Path) -> None:
    """Site B has two subjects that both hash into validation at val_fraction 0.9; split on its own it keeps one
    for training (the fallback), split inside a pool it would not. The pool must be the union of the per-site
    splits, so no site's validation subject is ever trained on."""
    from fedglioma.train.baseline import pooled_training_set
    from fedglioma.train.data import split_subjects

    cfg = TrainConfig(val_fraction=0.9, seed=7)
    a_files, a_labels = make_tiny_site(tmp_path / "A", n_subjects=6, size=8)
    b_dir = tmp_path / "B"
    b_files, b_labels = make_tiny_site(b_dir, n_subjects=2, size=8)
    renamed = []
    for f in b_files:  # unique IDs across sites
        new = f.with_name(f.name.replace("sub-", "sub-b"))
        f.rename(new)
        renamed.append(new)
    b_labels.write_text(b_labels.read_text().replace("\n0", "\nb0"))
    sites = {"A": (a_files, a_labels), "B": (renamed, b_labels)}
    pooled = pooled_training_set(sites, cfg, "centralized")
    expected, held_out = set(), set()
    for files in (a_files, renamed):
        subjects = [subject_of(f) for f in files]
        train, val = split_subjects(subjects, cfg.val_fraction, cfg.seed)
        expected |= set(train)
        held_out |= set(val)
    assert set(pooled.subjects) == expected and not set(pooled.subjects) & held_out
    all_subjects = [subject_of(f) for f in [*a_files, *renamed]]
    pooled_split_train, _ = split_subjects(all_subjects, cfg.val_fraction, cfg.seed)
    assert set(pooled_split_train) != expected  # the old way (split the pool) differs here


def test_baseline_is_checkpointed_validated_and_selected_like_the_federation(site, global0: Path, tmp_path: Path) -> None:
    """Every round of a baseline is validated by the same function as a federated round (the numbers equal
    validate() on the saved checkpoint) and select_model picks among the rounds."""
    from fedglioma.federated.select import select_model
    from fedglioma.train.baseline import train_baseline

    files, labels = site
    rounds = 2
    models = [tmp_path / f"round-{r}" / "model.safetensors" for r in range(1, rounds + 1)]
    vals = {"A": [tmp_path / f"round-{r}" / "validation-A.json" for r in range(1, rounds + 1)]}
    sides = train_baseline(global0, {"A": (files, labels)}, models, vals, name="A", train_cfg=TRAIN, model_cfg=MODEL)
    assert [s["round"] for s in sides] == [1, 2] and sides[-1]["epochs"] == rounds * TRAIN.epochs_per_round
    for r in range(rounds):
        doc = json.loads(vals["A"][r].read_text())
        again = validate(models[r], files, labels, tmp_path / f"again-{r}.json", site="A", round=r + 1,
                         train_cfg=TRAIN, model_cfg=MODEL)
        assert doc["metrics"] == again["metrics"] and doc["thresholds"] == again["thresholds"]
        assert doc["n_val"] == again["n_val"] >= 1
    final = select_model(vals["A"], tmp_path / "final.json", model_template=str(tmp_path / "round-{round}/model.safetensors"))
    assert final["round"] in (1, 2) and Path(final["model"]) == models[final["round"] - 1]
