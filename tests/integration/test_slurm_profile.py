"""profiles/slurm/config.yaml is sane (no cluster needed; a few seconds)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"

# The workflow's costly rules: each gets explicit resources in the profile.
COSTLY_RULES = {
    "synth_site",
    "labels",
    "preprocess_subject",
    "qc_site",
    "init_model",
    "local_train",
    "aggregate",
    "validate_round",
    "select_model",
    "training_curves",
    "evaluate",
    "report",
}
# Resources the executor sets itself or that carry each site's scope: never set globally here,
# a set-resources slurm_partition/slurm_account would override every site's own.
SCOPE_KEYS = {"slurm_partition", "slurm_account"}


@pytest.fixture(scope="module")
def profile() -> dict:
    data = yaml.safe_load(PROFILE.read_text())
    assert isinstance(data, dict), f"{PROFILE} is not a mapping"
    return data


def workflow_rules() -> set[str]:
    rules = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^rule (\w+):", smk.read_text(), flags=re.M))
    return rules


def test_executor_and_run_settings(profile: dict) -> None:
    assert profile["executor"] == "slurm"
    assert isinstance(profile["jobs"], int) and 1 <= profile["jobs"] <= 1000
    assert isinstance(profile["latency-wait"], int) and profile["latency-wait"] >= 30, "shared file systems lag"
    assert profile["rerun-incomplete"] is True, "resuming after an interruption must rerun incomplete jobs"
    assert "cores" not in profile, "--cores is for local runs; use jobs"


def test_status_check_settings(profile: dict) -> None:
    init = profile["slurm-init-seconds-before-status-checks"]
    between = profile["seconds-between-status-checks"]
    assert isinstance(init, int) and 10 <= init <= 300
    assert isinstance(between, int) and 10 <= between <= 180, "do not hammer slurmctld/slurmdbd"
    assert isinstance(profile["slurm-status-attempts"], int) and profile["slurm-status-attempts"] >= 1
    # squeue forgets finished jobs after MinJobAge; the plugin's sacct default is the safe choice
    assert profile.get("slurm-status-command", "sacct") == "sacct"


def test_default_resources(profile: dict) -> None:
    res = profile["default-resources"]
    for key in ("mem_mb", "runtime"):
        assert isinstance(res[key], int) and res[key] > 0, key
    assert not SCOPE_KEYS & set(res), "partition/account come from sites.tsv and config cluster.*"
    assert "cpus_per_task" not in res, "CPUs follow each rule's threads (set-threads)"


def test_per_rule_resources_and_threads(profile: dict) -> None:
    set_res, set_threads = profile["set-resources"], profile["set-threads"]
    assert set(set_res) == COSTLY_RULES, (
        f"missing: {sorted(COSTLY_RULES - set(set_res))}, unknown: {sorted(set(set_res) - COSTLY_RULES)}"
    )
    for rule, res in set_res.items():
        assert isinstance(res, dict), rule
        assert isinstance(res.get("mem_mb"), int) and res["mem_mb"] > 0, rule
        assert isinstance(res.get("runtime"), int) and res["runtime"] > 0, rule
        assert not SCOPE_KEYS & set(res), f"{rule}: would override every site's partition/account"
        assert not {"gpu", "gpus", "gres", "gpu_model"} & set(res), f"{rule}: GPU requests are off by default"
    assert set(set_threads) <= COSTLY_RULES
    for rule, n in set_threads.items():
        assert isinstance(n, int) and 1 <= n <= 64, rule
    for rule in ("local_train", "evaluate"):
        assert set_threads.get(rule, 1) >= 2, f"{rule} is the costliest step"


def test_gpu_request_documented_but_off() -> None:
    text = PROFILE.read_text()
    for rule in ("local_train", "evaluate"):
        # the rule's block under set-resources: up to the next two-space-indented key
        block = re.search(rf"^  {rule}:\n((?:(?!  \w).*\n)*)", text, flags=re.M)
        assert block, f"{rule} missing from set-resources"
        assert re.search(r"^\s*#\s*gpu: 1$", block.group(1), flags=re.M), f"no commented GPU request for {rule}"


def test_slurm_extra_has_no_executor_managed_options(profile: dict) -> None:
    validation = pytest.importorskip("snakemake_executor_plugin_slurm.validation")
    forbidden = validation.get_forbidden_slurm_options()
    for rule, res in profile["set-resources"].items():
        extra = str(res.get("slurm_extra", ""))
        for pattern, name in forbidden.items():
            assert not re.search(pattern, extra), f"{rule}: slurm_extra sets the {name}, which the plugin manages"


def test_rule_names_exist_in_workflow(profile: dict) -> None:
    rules = workflow_rules()
    if not rules:
        pytest.skip("workflow/rules has no rules yet")
    unknown = (set(profile["set-resources"]) | set(profile["set-threads"])) - rules
    assert not unknown, f"profile names rules the workflow does not have: {sorted(unknown)}"


def test_every_key_is_a_snakemake_option(profile: dict) -> None:
    cli = pytest.importorskip("snakemake.cli")
    options = {o for action in cli.get_argument_parser()._actions for o in action.option_strings}
    unknown = [k for k in profile if f"--{k}" not in options]
    assert not unknown, f"not options of this Snakemake (with the slurm plugin installed): {unknown}"
