"""The conda environments, the package's dependency groups and requirements.lock say the same thing.

Each ``envs/*.yaml`` installs the package with one optional group under the lock as a constraint, so versions
live only in the lock; every declared dependency is pinned there at a version its specifier allows; and every
rule's ``conda:`` names one of these files.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
GROUPS = PYPROJECT["optional-dependencies"]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def lock() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def requirements(group: str | None) -> list[Requirement]:
    reqs = [Requirement(r) for r in (PYPROJECT["dependencies"] if group is None else GROUPS[group])]
    return [r for r in reqs if canonicalize_name(r.name) != "fedglioma"]


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_lock_pins_every_dependency_within_its_specifier(group: str | None) -> None:
    pins = lock()
    for req in requirements(group):
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} ({group or 'core'}) is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {req} ({group or 'core'})"
        )


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_installs_its_group_under_the_lock(env: Path) -> None:
    doc = yaml.safe_load(env.read_text())
    pip = next(d["pip"] for d in doc["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pip == ["-c ../requirements.lock", f"-e ..[{env.stem}]"], (
        f"{env.name}: the pip section must be the lock as constraint and the package with its group only"
    )
    assert env.stem in GROUPS, f"{env.name}: pyproject.toml has no optional group {env.stem!r}"
    python = next(d for d in doc["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert Requirement(f"python{PYPROJECT['requires-python']}").specifier.contains(python.split("=", 1)[1] + ".0")


def test_every_rule_uses_one_of_the_envs() -> None:
    named = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        named |= set(re.findall(r'conda:\s*\n\s*"\.\./\.\./envs/([\w-]+)\.yaml"', smk.read_text()))
    assert named, "no rule names a conda env"
    assert named <= {p.stem for p in ENVS}
    assert {p.stem for p in ENVS} - named <= {"workflow"}  # the engine's env is the one Snakemake itself runs in


def test_all_group_is_every_group() -> None:
    (req,) = [Requirement(r) for r in GROUPS["all"]]
    assert req.extras == set(GROUPS) - {"all", "dev"}
