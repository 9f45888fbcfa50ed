"""The one configuration model (``fedglioma.settings``): every key defined once, unknown keys refused everywhere
with the key's path, and the files generated from it (JSON schema, README key table) current."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import update_config

from fedglioma import settings
from fedglioma.errors import ConfigError
from fedglioma.settings import load_config, sections, validate_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {"config": ["config.yaml"], "benchmark": ["config.yaml", "benchmark.yaml"],
           "paper": ["config.yaml", "paper.yaml"]}


def _nest(path: str, value: dict[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for ``path`` ``"a.b"`` (``value`` itself for the top level)."""
    for key in reversed([k for k in path.split(".") if k]):
        value = {key: value}
    return value


def _typo_cases() -> list[tuple[str, dict[str, Any], str]]:
    """A misspelt key in every section (test id, config, the key's path): the top level, every nested section
    (each member of a union such as ``preprocess.normalise``), and a per-site clinical override."""
    cases = []
    for path, model in sections():
        # a union member is chosen by its discriminator: give the one that selects it
        given = {"method": "percentile"} if model is settings.PercentileConfig else {}
        key = f"{path}.sepcial_typo" if path else "sepcial_typo"
        cases.append((f"{path or '(top)'}:{model.__name__}", _nest(path, {**given, "sepcial_typo": 1}), key))
    for path in ("clinical.sites.SiteA", "clinical.sites.SiteA.columns"):
        cases.append((path, _nest(path, {"sepcial_typo": 1}), f"{path}.sepcial_typo"))
    return cases


def test_every_section_is_covered() -> None:
    paths = {p for p, _ in sections()}
    assert {"", "demo.strengths", "preprocess.coregister", "preprocess.n4", "preprocess.normalise", "qc.thresholds",
            "train.augment", "train.lr_schedule", "train.task_weights", "clinical.default.columns",
            "clinical.default.values", "clinical.default.thresholds", "cluster"} <= paths
    assert all(model.model_config.get("extra") == "forbid" for _, model in sections())


@pytest.mark.parametrize(("config", "key"), [c[1:] for c in _typo_cases()], ids=[c[0] for c in _typo_cases()])
def test_a_typo_in_any_section_fails_with_its_path(config: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate_config(config, files=["config/config.yaml"])
    assert str(exc.value).startswith(f"config/config.yaml: {key}: extra inputs are not permitted. Fix: remove {key} "
                                     "or correct its spelling (")
    assert "\n" not in str(exc.value)


def test_bad_values_name_their_key() -> None:
    for config, want in [
        ({"federated": {"rounds": 0}}, "federated.rounds: input should be greater than or equal to 1"),
        ({"train": {"augment": {"p_affine": 2}}}, "train.augment.p_affine: input should be less than or equal to 1"),
        ({"preprocess": {"normalise": {"method": "minmax"}}}, "preprocess.normalise: method must be zscore or "),
        ({"preprocess": {"grid": {"grid_shape": [48, 64]}}}, "preprocess.grid.grid_shape: "),
        ({"demo": {"enabled": "yes"}}, "demo.enabled: input should be a valid boolean"),
        ({"layouts": {"nnunet": {"channels": ["T1", "T1", "T2", "FLAIR"]}}}, "layouts.nnunet: value error"),
    ]:
        with pytest.raises(ConfigError, match=f"^config: {want}"):
            validate_config(config)


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate_and_round_trip(name: str) -> None:
    """config.yaml and its overlays validate; the dumped config (what the rules receive) validates to itself."""
    merged: dict[str, Any] = {}
    for f in CONFIGS[name]:
        update_config(merged, yaml.safe_load((REPO / "config" / f).read_text()))
    dumped = validate_config(merged).model_dump(mode="json")
    assert validate_config(dumped).model_dump(mode="json") == dumped


def test_shorthands_and_clinical_overrides() -> None:
    cfg = validate_config({"train": {"augment": False, "lr_schedule": "cosine"}, "clinical": {
        "default": {"id_column": "ID", "columns": {"idh": "IDH1"}, "values": {"idh": {"mut": "mutant"}}},
        "sites": {"B": {"columns": {"mgmt": "MGMT %"}, "values": {"idh": {"pos": "mutant"}},
                        "thresholds": {"mgmt": 10}}}}})
    assert not cfg.train.augment.enabled and cfg.train.augment.flip and cfg.train.lr_schedule.name == "cosine"
    b = validate_config(cfg.model_dump(mode="json")).clinical.for_site("B")  # overrides survive the dump
    assert (b.id_column, b.columns.idh, b.columns.mgmt, b.columns.grade) == ("ID", "IDH1", "MGMT %", "grade")
    assert b.values.idh == {"mut": "mutant", "pos": "mutant"} and b.thresholds.mgmt == 10.0
    assert cfg.clinical.for_site("A") == cfg.clinical.default


def test_load_config_default_and_missing_file(tmp_path: Path) -> None:
    assert Path("config/config.yaml") == settings.DEFAULT_CONFIG
    assert load_config(REPO / "config" / "config.yaml").demo.enabled
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_schema_file_is_the_export() -> None:
    assert settings.SCHEMA_FILE.read_text() == settings.schema_text(), "run `python -m fedglioma.settings`"


def test_readme_key_table_is_current() -> None:
    text = (REPO / "config" / "README.md").read_text()
    assert settings.readme_text(text) == text, "run `python -m fedglioma.settings`"


def test_dry_run_with_a_typo_fails_before_any_job(tmp_path: Path) -> None:
    typo = tmp_path / "typo.yaml"
    typo.write_text("preprocess:\n  n4:\n    shrink_factr: 4\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "workflow" / "scripts"),
                                                         os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile",
                          "config/config.yaml", str(typo)], cwd=REPO, capture_output=True, text=True, env=env,
                         timeout=300, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"config/config.yaml, {typo}: preprocess.n4.shrink_factr: extra inputs are not permitted" in out, out
    assert "Job stats" not in out and "rule " not in out.split("ConfigError", 1)[0]
