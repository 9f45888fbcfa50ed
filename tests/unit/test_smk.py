"""The Snakemake entry helper: thread caps and error reporting of a job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedglioma.errors import InputError
from fedglioma.smk import run
from fedglioma.threads import set_threads

REPO = Path(__file__).resolve().parents[2]


def test_set_threads_caps_env_and_an_imported_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    before = torch.get_num_threads()
    for var in ("OMP_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        monkeypatch.delenv(var, raising=False)
    try:
        set_threads(1)
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_set_threads_does_not_import_torch() -> None:
    code = "import sys; from fedglioma.threads import set_threads; set_threads(2); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


#: what neither the ``fedglioma`` command line nor the Snakefile may load before a step runs (seconds per process)
HEAVY = ("torch", "sklearn", "ants", "cryptography", "flwr", "scipy", "nibabel", "pydicom", "matplotlib")


def test_command_line_and_configs_load_without_heavy_libraries() -> None:
    """Building the ``fedglioma`` parser and reading the configuration import none of :data:`HEAVY` (nor pandas),
    the lazily exported names still resolve."""
    code = (
        "import sys\n"
        "from fedglioma.cli import build_parser\n"
        "from fedglioma.settings import load_config\n"
        f"load_config({str(Path(__file__).resolve().parents[2] / 'config' / 'config.yaml')!r})\n"
        "build_parser()\n"
        f"print(sorted(m for m in {(*HEAVY, 'pandas')!r} if m in sys.modules))\n"
        "import fedglioma.federated as f, fedglioma.model as m, fedglioma.train as t, fedglioma.preprocess as pp\n"
        "import fedglioma.federation as fl\n"
        "assert all(getattr(p, n) is not None for p in (f, m, t, pp, fl) for n in p.__all__)\n"
        "assert f.FedAvg.__module__ == 'fedglioma.federated.strategies' and 'FedAvg' in dir(f)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import fedglioma.federated

        _ = fedglioma.federated.nope


def test_snakefile_imports_no_heavy_library() -> None:
    """The package imports of ``workflow/rules/common.smk`` (run by every ``snakemake`` call, and by every cluster
    job's own snakemake) load none of :data:`HEAVY`: torch alone costs seconds per call."""
    lines = [line for line in (REPO / "workflow" / "rules" / "common.smk").read_text().splitlines()
             if re.match(r"(from|import) fedglioma\b", line)]
    assert len(lines) >= 5, lines
    code = "import sys\n" + "\n".join(lines) + f"\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _job(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(log=[str(tmp_path / "job.log")], threads=1, rule="demo", wildcards={"site": "A"})


def test_run_logs_a_fedglioma_error_as_one_line_and_fails(tmp_path: Path) -> None:
    def broken() -> None:
        raise InputError("T1c missing", site="A", subject="001", file="a/b.nii.gz", fix="add the file")

    with pytest.raises(SystemExit) as exc:
        run(_job(tmp_path), broken)
    assert exc.value.code == 1
    text = (tmp_path / "job.log").read_text()
    assert "T1c missing" in text and "001" in text and "a/b.nii.gz" in text and "Traceback" not in text


def test_run_returns_the_result(tmp_path: Path) -> None:
    assert run(_job(tmp_path), lambda x: x + 1, x=1) == 2


def test_killed_outputs_get_a_placeholder_once_unlocked(tmp_path: Path) -> None:
    """Outputs Snakemake marked incomplete and that do not exist (a job killed before writing them) get an empty
    placeholder, so that --rerun-incomplete sees them; not while a lock is held, nor for existing outputs."""
    import base64

    from fedglioma.smk import killed_outputs, mark_killed_outputs

    marks = tmp_path / ".snakemake" / "incomplete"
    long = "results/" + "/".join(["d" * 60] * 5) + "/x.json"  # record name too long for one file: @-folders
    for path in ("results/a/update.safetensors", "results/b.json", long):
        b64 = base64.urlsafe_b64encode(path.encode()).decode()
        parts = [b64[i : i + 254] for i in range(0, len(b64), 254)]
        rec = marks.joinpath(*["@" + p for p in parts[:-1]], parts[-1])
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.write_text("{}")
    (tmp_path / "results").mkdir()
    (tmp_path / "results/b.json").write_text("half")  # exists: Snakemake's own business
    assert killed_outputs(tmp_path) == sorted(["results/a/update.safetensors", long])
    locks = tmp_path / ".snakemake" / "locks"
    locks.mkdir()
    (locks / "0.input.lock").write_text("")
    assert mark_killed_outputs(tmp_path) == []
    (locks / "0.input.lock").unlink()
    assert mark_killed_outputs(tmp_path) == sorted(["results/a/update.safetensors", long])
    assert (tmp_path / "results/a/update.safetensors").read_bytes() == b""
    assert killed_outputs(tmp_path) == []
