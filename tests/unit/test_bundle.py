"""The model bundle: what it holds, that it loads the exported model exactly, and what it refuses."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fedglioma.atomic import write_json
from fedglioma.errors import ConfigError, InputError
from fedglioma.predict.bundle import CARD, CHECKSUMS, MANIFEST, MEMBERS, WEIGHTS, export_bundle, load_bundle
from fedglioma.settings import Config, ModelConfig
from fedglioma.train.local import init_global, load_model, predict

MODEL = {"width": 4, "depth": 2}


def _config(**changes: object) -> dict:
    cfg = Config.model_validate({"model": MODEL, **changes}).model_dump(mode="json")
    return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """A bundle exported from a freshly initialised model, as the workflow's export_bundle writes it (tests only
    read it)."""
    tmp_path = tmp_path_factory.mktemp("bundle")
    cfg = _config(demo={"enabled": True})
    model = tmp_path / "round-1" / "global.safetensors"
    model.parent.mkdir()
    init_global(model, ModelConfig(**MODEL), seed=3)
    final = tmp_path / "final.json"
    write_json(final, {"round": 1, "model": str(model), "score": 0.7, "score_rule": "mean",
                       "thresholds": {"idh": {"threshold": 0.4}, "codeletion": {"threshold": None, "reason": "one class"},
                                      "mgmt": {"threshold": 0.5}, "grade4": {"threshold": 0.6}},
                       "rounds": {"1": {"metrics": {"dice_mean": 0.8}, "n_val": 4, "sites": ["A", "B"]}}})
    metrics = tmp_path / "metrics.json"
    write_json(metrics, {"site": "X", "level": 0.95, "n_boot": 200, "subjects": {"n_predicted": 3},
                         "markers": {"idh": {"estimable": True, "auc": 0.8, "auc_ci_low": 0.6, "auc_ci_high": 0.95,
                                             "n": 3, "n_pos": 1, "n_neg": 2}},
                         "segmentation": {"estimable": True, "n": 3, "dice": {"median": 0.8}}})
    summaries = []
    for site, n in (("A", 5), ("B", 7)):
        s = tmp_path / f"{site}_summary.json"
        write_json(s, {"site": site, "role": "train", "n": n, "idh_n": n, "idh_positive": 2})
        summaries.append(str(s))
    out = tmp_path / "model" / "fedglioma-test.zip"
    export_bundle(str(final), [str(model)], str(metrics), summaries, str(out), model="federated", config=cfg)
    return out, model, cfg


def _rewrite(src: Path, dst: Path, change: dict[str, bytes | None]) -> Path:
    """A copy of the bundle zip with members replaced (or removed: ``None``)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    for name, data in change.items():
        if data is None:
            members.pop(name)
        else:
            members[name] = data
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _resum(members: dict[str, bytes]) -> bytes:
    import hashlib

    return "".join(f"{hashlib.sha256(members[n]).hexdigest()}  {n}\n" for n in (MANIFEST, WEIGHTS, CARD)).encode()


def test_bundle_holds_model_recipe_thresholds_and_card(exported) -> None:
    out, model_file, cfg = exported
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == sorted(MEMBERS)
        manifest = json.loads(zf.read(MANIFEST))
        card = zf.read(CARD).decode()
    assert manifest["recipe"]["preprocess"] == cfg["preprocess"]
    assert manifest["recipe"]["qc_thresholds"] == cfg["qc"]["thresholds"]
    assert manifest["model"]["config"]["width"] == 4 and manifest["model"]["round"] == 1
    assert manifest["thresholds"]["idh"]["threshold"] == 0.4
    assert manifest["training"]["n_subjects"] == 12 and [s["site"] for s in manifest["training"]["sites"]] == ["A", "B"]
    assert manifest["external"]["markers"]["idh"]["auc"] == 0.8
    assert manifest["synthetic"] is True
    assert "not for clinical use" in card and "A (n=5)" in card and "0.80 (0.60-0.95)" in card


def test_loaded_bundle_predicts_exactly_as_the_exported_model(exported) -> None:
    out, model_file, _ = exported
    bundle = load_bundle(out)
    x = np.random.default_rng(0).normal(size=(4, 16, 16, 16)).astype(np.float32)
    seg_a, probs_a = predict(bundle.model(), x)
    seg_b, probs_b = predict(load_model(model_file, ModelConfig(**MODEL)), x)
    np.testing.assert_array_equal(seg_a, seg_b)
    assert probs_a == probs_b
    assert bundle.thresholds["mgmt"]["threshold"] == 0.5


def test_tampered_member_is_refused(exported, tmp_path) -> None:
    out, _, _ = exported
    with zipfile.ZipFile(out) as zf:
        weights = bytearray(zf.read(WEIGHTS))
    weights[-1] ^= 1
    bad = _rewrite(out, tmp_path / "bad.zip", {WEIGHTS: bytes(weights)})
    with pytest.raises(InputError, match=f"checksum of member {WEIGHTS}"):
        load_bundle(bad)
    extra = _rewrite(out, tmp_path / "extra.zip", {"notes.txt": b"hi"})
    with pytest.raises(InputError, match="expected exactly"):
        load_bundle(extra)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable bundle"):
        load_bundle(tmp_path / "junk.zip")


def _with_manifest(out: Path, dst: Path, edit) -> Path:
    with zipfile.ZipFile(out) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members[MANIFEST])
    edit(manifest)
    members[MANIFEST] = json.dumps(manifest).encode()
    members[CHECKSUMS] = _resum(members)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def test_recipe_this_version_cannot_reproduce_is_named(exported, tmp_path) -> None:
    out, _, _ = exported

    def new_key(m: dict) -> None:
        m["recipe"]["preprocess"]["n4"]["spline_order"] = 3

    with pytest.raises(InputError, match=r"recipe\.preprocess\.n4\.spline_order"):
        load_bundle(_with_manifest(out, tmp_path / "a.zip", new_key))

    def other_recipe(m: dict) -> None:
        m["recipe_version"] = 99

    with pytest.raises(InputError, match="recipe_version 99"):
        load_bundle(_with_manifest(out, tmp_path / "b.zip", other_recipe))

    def template(m: dict) -> None:
        m["recipe"]["preprocess"]["atlas"]["template"] = "Colin27"

    with pytest.raises(InputError, match=r"recipe\.preprocess\.atlas\.template: input should be"):
        load_bundle(_with_manifest(out, tmp_path / "c.zip", template))


def test_fedbn_federated_model_is_not_exported(exported, tmp_path) -> None:
    out, model_file, _ = exported
    cfg = _config(federated={"site_local_patterns": ["norm"]})
    root = model_file.parent.parent
    with pytest.raises(ConfigError, match="site-local"):
        export_bundle(str(root / "final.json"), [str(model_file)], str(root / "metrics.json"), [],
                      str(tmp_path / "x.zip"), model="federated", config=cfg)
    assert not (tmp_path / "x.zip").exists()


def test_bundle_weights_are_plain_safetensors(exported) -> None:
    """Nothing a site receives is unpickled: the weights load with safetensors alone."""
    from safetensors.torch import load

    out, _, _ = exported
    with zipfile.ZipFile(out) as zf:
        state = load(zf.read(WEIGHTS))
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_the_same_model_exports_the_same_weights_bytes(exported, tmp_path) -> None:
    """The weights member is reproducible (one safetensors metadata entry: safetensors orders several at random),
    so a resumed workflow exports the uninterrupted one's bytes."""
    out, model_file, cfg = exported
    root = model_file.parent.parent
    again = tmp_path / "again.zip"
    summaries = [str(root / f"{s}_summary.json") for s in ("A", "B")]
    for _ in range(3):
        export_bundle(str(root / "final.json"), [str(model_file)], str(root / "metrics.json"), summaries, str(again),
                      model="federated", config=cfg)
        with zipfile.ZipFile(out) as a, zipfile.ZipFile(again) as b:
            assert a.read(WEIGHTS) == b.read(WEIGHTS)
