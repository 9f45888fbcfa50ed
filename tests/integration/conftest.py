"""Fixtures shared by the integration tests: one run of the tiny workflow for the whole session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.tiny import snakemake, write_tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny workflow run once (2 training sites x 2 rounds + 1 external site of raw exams, bundle exported);
    tests that change it restore it. A developer may point FEDGLIOMA_TINY_RUN at a finished run (never set in CI)."""
    if os.environ.get("FEDGLIOMA_TINY_RUN"):
        return Path(os.environ["FEDGLIOMA_TINY_RUN"])
    work = write_tiny(tmp_path_factory.mktemp("tiny"))
    res = snakemake(work, "--cores", "2")
    assert res.returncode == 0, res.stderr[-6000:]
    return work
