"""A non-editable install works: the package carries what it needs (schemas, report template), not the checkout.

The package is built and installed without ``-e`` into a fresh virtual environment. Its dependencies come from
the project's ``.venv`` as a plain path entry (so the ``.venv``'s editable ``.pth``, which points at the checkout,
is not processed). The workflow is copied without ``workflow/scripts/fedglioma``; ``fedglioma cohort check-inputs`` and
``snakemake -n`` must then run from the installed package alone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import LAYOUT_LABELS, make_site, write_sites_tsv

REPO = Path(__file__).resolve().parents[2]
#: the children's environment: no PYTHONPATH, which could put a checkout's package first
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` folder of a fresh venv holding a non-editable install of the checkout."""
    root = tmp_path_factory.mktemp("install")
    env = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    py = env / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=ENV).stdout.strip())
    # the project venv's packages as a plain path: pip, setuptools and every dependency, but not its .pth files
    (site / "zz_project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src = root / "src"  # a clean copy: no egg-info or build folders of the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", ".snakemake", "logs", "*.egg-info", "build", "__pycache__", ".pytest_cache"))
    res = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--target", str(site), "--quiet", str(src)], capture_output=True, text=True, check=False,
                         env=ENV)
    assert res.returncode == 0, res.stdout + res.stderr
    return env / "bin"


def test_package_comes_from_the_install(installed: Path) -> None:
    res = subprocess.run([str(installed / "python"), "-c",
                          "import fedglioma, fedglioma.config as c; print(fedglioma.__file__); "
                          "print(sorted(p.name for p in c.SCHEMA_DIR.iterdir())); "
                          "from fedglioma.report.html import _environment as e; print(sorted(e().list_templates()))"],
                         capture_output=True, text=True, check=True, cwd="/", env=ENV)
    origin, schemas, templates = res.stdout.splitlines()
    assert str(installed.parent) in origin and str(REPO) not in origin
    assert schemas == "['config.schema.yaml', 'sites.schema.yaml']"
    assert templates == "['report.css', 'report.html.j2', 'report.js']"


def test_check_inputs_and_dry_run_from_the_install(installed: Path, tmp_path: Path) -> None:
    train, ext = make_site(tmp_path / "train", "brats2021"), make_site(tmp_path / "ext", "egd")
    tsv = write_sites_tsv(tmp_path / "sites.tsv", [
        {"site": "A", "role": "train", "layout": "brats2021", "path": str(train),
         "clinical": str(train / "clinical.tsv"), "tumour_labels": ",".join(map(str, LAYOUT_LABELS["brats2021"]))},
        {"site": "X", "role": "external", "layout": "egd", "path": str(ext), "clinical": str(ext / "clinical.tsv")},
    ])
    res = subprocess.run([str(installed / "python"), "-m", "fedglioma.cli", "cohort", "check-inputs", "--sites", str(tsv),
                          "--config", str(REPO / "config" / "config.yaml")],
                         capture_output=True, text=True, check=False, cwd=tmp_path, env=ENV)
    assert res.returncode == 0 and "all inputs OK" in res.stdout, res.stdout + res.stderr

    work = tmp_path / "workflow_copy"
    shutil.copytree(REPO / "workflow", work / "workflow", ignore=shutil.ignore_patterns("fedglioma", "__pycache__"))
    shutil.copytree(REPO / "config", work / "config")
    shutil.copy(REPO / "Snakefile", work)
    assert not (work / "workflow" / "scripts" / "fedglioma").exists()
    res = subprocess.run([str(installed / "python"), "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1"],
                         capture_output=True, text=True, check=False, cwd=work, timeout=600, env=ENV)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "local_train" in res.stdout + res.stderr
