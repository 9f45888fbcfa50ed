"""Fault points (fedglioma.faults): silent unless FEDGLIOMA_FAULTS names them."""

import os
import subprocess
import sys

import pytest

from fedglioma.faults import ENV, InjectedFault, fault_point


def test_unset_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    fault_point("local_train/SiteA/round-1/start")


def test_raise_matches_pattern_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "local_train/SiteB/round-2/*=raise")
    fault_point("local_train/SiteA/round-2/start")
    fault_point("local_train/SiteB/round-1/start")
    with pytest.raises(InjectedFault, match="local_train/SiteB/round-2/start"):
        fault_point("local_train/SiteB/round-2/start")


def test_bad_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "x/y=explode")
    with pytest.raises(ValueError, match="PATTERN=ACTION"):
        fault_point("x/y")


def test_kill_takes_the_process_group() -> None:
    code = "from fedglioma.faults import fault_point; fault_point('a/b'); print('survived')"
    p = subprocess.run([sys.executable, "-c", code], env={**os.environ, ENV: "a/*=kill"}, capture_output=True,
                       text=True, start_new_session=True, timeout=60)
    assert p.returncode == -9 and "survived" not in p.stdout
