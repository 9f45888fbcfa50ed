"""One route: every rule reaches its step function by name, and the command line builds the same arguments."""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedglioma import registry
from fedglioma.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_every_rule_script_is_the_generic_entry() -> None:
    """No per-rule stub scripts: every rule with a script runs workflow/scripts/step.py."""
    scripts = sorted(p.name for p in (REPO / "workflow" / "scripts").glob("*.py"))
    assert scripts == ["step.py"]
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for line in smk.read_text().splitlines():
            if line.strip().startswith('"../scripts/'):
                assert line.strip() == '"../scripts/step.py"', (smk.name, line)


@pytest.fixture(scope="module")
def sites_with_predict(tmp_path_factory) -> Path:
    """The demo's sites.tsv plus a site with role predict (two unlabelled patients the test writes)."""
    from tests.conftest import make_site

    tmp = tmp_path_factory.mktemp("predict_site")
    clinic = make_site(tmp / "clinic", "upenn_gbm", with_seg=False, clinical=False)
    table = (REPO / "config" / "sites.tsv").read_text().rstrip("\n")
    table += f"\nClinic\tpredict\tupenn_gbm\t{clinic}\t\t\tno\tno\tnative\t\t\n"
    (tmp / "sites.tsv").write_text(table)
    return tmp / "sites.tsv"


@pytest.fixture(scope="module")
def demo_jobs(sites_with_predict):
    """Every job of the demo DAG (default config, baselines on, plus a predict site), as its entry would see it."""
    from fedglioma.audit import dag_jobs

    jobs, _ = dag_jobs(REPO / "Snakefile", [REPO / "config" / "config.yaml"],
                       config={"baselines": {"centralized": True, "local_only": True},
                               "sites": str(sites_with_predict)}, workdir=REPO)
    return jobs


def test_every_rule_names_exactly_what_its_step_takes(demo_jobs) -> None:
    """For each rule of the DAG, the job's named inputs, outputs, params and wildcards map onto its function."""
    seen = set()
    for job in demo_jobs:
        if job.rule == "all":
            continue
        func = registry.function(registry.step_of_rule(job.rule))
        smk = SimpleNamespace(**job.named)
        kwargs = registry.rule_kwargs(func, smk)
        assert kwargs, job.rule
        seen.add(job.rule)
    every = {r for s in registry.STEPS for r in s.rules}
    assert every - seen == set(), f"registered rules that the demo DAG does not run: {every - seen}"


def test_rule_and_function_drift_fails_with_both_names() -> None:
    def step(a: str, out: str, *, site: str, n: int = 1) -> None: ...

    ok = SimpleNamespace(rule="r", threads=1, params={}, input={"a": "x"}, output={"out": "y"},
                         wildcards={"site": "S", "n": "3"})
    assert registry.rule_kwargs(step, ok) == {"a": "x", "out": "y", "site": "S", "n": 3}
    assert registry.rule_kwargs(step, SimpleNamespace(**{**vars(ok), "wildcards": {"site": "S"}}))["n"] == 1
    extra = SimpleNamespace(**{**vars(ok), "params": {"typo": 1}})
    with pytest.raises(ConfigError, match=r"rule r .*params\.typo.*does not take"):
        registry.rule_kwargs(step, extra)
    missing = SimpleNamespace(**{**vars(ok), "input": {}})
    with pytest.raises(ConfigError, match=r"rule r .*gives no 'a'"):
        registry.rule_kwargs(step, missing)


@pytest.mark.parametrize("step", registry.STEPS, ids=lambda s: f"{s.group}-{s.command}")
def test_command_options_give_the_rule_arguments(step, demo_jobs, sites_with_predict, tmp_path, monkeypatch) -> None:
    """`fedglioma <group> <command>` with the values a rule's job gives, as options, builds the same kwargs."""
    from fedglioma.cli import build_parser

    job = next(j for j in demo_jobs if j.rule in step.rules)
    func = registry.function(step)
    want = registry.rule_kwargs(func, SimpleNamespace(**job.named))
    argv = [step.group, step.command, "--config", str(REPO / "config" / "config.yaml"),
            "--set", f"sites={sites_with_predict}"]
    for p in registry.params(func):
        if p.kind == "config":
            continue
        value = want.get(p.name)
        if p.kind == "row":
            argv += ["--site", value.site, "--sites", str(sites_with_predict)]
        elif p.kind == "threads":
            argv += ["--threads", str(value)]
        elif value is None:
            continue
        elif p.sequence:
            argv += ["--" + p.name.replace("_", "-"), *map(str, value)]
        elif p.scalar is bool:
            argv += ["--" + ("" if value else "no-") + p.name.replace("_", "-")]
        else:
            argv += ["--" + p.name.replace("_", "-"), str(value)]
    if not any(p.kind in ("config", "row") for p in registry.params(func)):
        argv = argv[:2] + argv[6:]
    monkeypatch.chdir(REPO)
    args = build_parser(argv).parse_args(argv)
    got = registry.cli_kwargs(func, args)
    assert got == want


def test_step_entry_runs_the_rule_step(monkeypatch) -> None:
    """workflow/scripts/step.py calls the registered function of snakemake.rule with the mapped arguments."""
    import functools

    import fedglioma.federated.select as select

    calls = []

    @functools.wraps(select.select_model)  # same signature
    def record(*a, **k):
        calls.append(k)

    monkeypatch.setattr(select, "select_model", record)
    smk = SimpleNamespace(rule="centralized_select", threads=1, log=[], params={"model_template": "t"},
                          input={"metrics": ["a.json"]}, output={"final": "f.json"}, wildcards={})
    runpy.run_path(str(REPO / "workflow" / "scripts" / "step.py"), init_globals={"snakemake": smk})
    assert calls == [{"metrics": ["a.json"], "final": "f.json", "model_template": "t"}]


def test_set_overrides_reach_the_config_section(tmp_path) -> None:
    from fedglioma.settings import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("sites: s.tsv\n")
    out = load_config(cfg, overrides=["train.epochs_per_round=2", "preprocess.n4.iterations=[5, 5]"])
    assert out.train.epochs_per_round == 2 and out.preprocess.n4.iterations == [5, 5]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(cfg, overrides=["train.epochs_per_round"])
    with pytest.raises(ConfigError, match=r"--set train.epochs_per_rnd=2: train.epochs_per_rnd: extra inputs"):
        load_config(cfg, overrides=["train.epochs_per_rnd=2"])


def test_every_stage_lists_its_commands(capsys) -> None:
    from fedglioma.cli import GROUPS, build_parser

    parser = build_parser()
    for group in GROUPS:
        with pytest.raises(SystemExit):
            parser.parse_args([group, "--help"])
        out = capsys.readouterr().out
        for step in registry.STEPS:
            if step.group == group:
                assert step.command in out, (group, step.command)
    assert isinstance(parser, argparse.ArgumentParser)
