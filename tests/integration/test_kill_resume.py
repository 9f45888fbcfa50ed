"""Killed at any point, resumed to the same bytes (issue 17).

A copy of the session's tiny run (``tiny_run``: the uninterrupted reference) is rewound by forcing one job
(``--forcerun``; the full chain first deletes a training subject's preprocessing and forces its job, the quick one
forces site A's round-2 training), so that the rerun is one chain: that job, then every job that reads its outputs
(their inputs are newer), up to the external evaluation, the report and the bundle. The
workflow is then run again and again with ``FEDGLIOMA_FAULTS=<point>=kill`` (``fedglioma.faults``): each run dies
by SIGKILL (the job and its snakemake) at the next fault point in the chain; each point lies in the same job as
the previous one or in a job that reads its outputs, so which point fires never depends on timing. Between two
runs the resume procedure of docs/hpc.md ("Resuming after a crash") is followed: ``--unlock``, then the same
command with ``--rerun-incomplete`` (without it Snakemake refuses the partial outputs). A last run without faults
finishes, and every model, update, validation, selection and external result must be byte-identical to the
reference (the rewound subject's training file and the bundle: their content; both carry the time they were
written), with no temporary left behind and every parameter file matching its sidecar.

Cost (2 cores shared with other work, load about 5, reference run shared): the full chain (:data:`FULL`,
``FEDGLIOMA_KILL_RESUME=full``: 11 kills from a subject's preprocessing to the report) took 8.7 min; ``make test``
runs :data:`QUICK` (6 kills from site A's round 2 on): 4.1 min under the same load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.integration.tiny import BIN, REPO

pytestmark = pytest.mark.slow

#: The training subject whose preprocessing is deleted (site A's first subject of the demo cohort).
SITE = "A"
#: Kill points in chain order: each lies in the job of the previous point or in one that reads its outputs.
#: ``{subject}`` is filled in. The second element names what the kill leaves for Snakemake to refuse (an output
#: written while another output of the same job is not), or None.
FULL: list[tuple[str, str | None]] = [
    ("preprocess/A/{subject}/import/before-stamp", None),
    ("preprocess/A/{subject}/register_atlas/done", None),
    ("preprocess/A/{subject}/training-file/between-files", "sites/A/prep/sub-{subject}_train.npz"),
    ("local_train/A/round-1/epoch-1/step-1", None),
    ("save_params/update/A/round-1/before-sidecar", "sites/A/federated/round-1/update.safetensors"),
    ("aggregate/round-1/after-model", "federated/round-1/global.safetensors"),
    ("local_train/B/round-2/after-update", "sites/B/federated/round-2/update.json"),
    ("save_params/global/round-2/before-sidecar", "federated/round-2/global.safetensors"),
    ("validate_round/A/round-2/before-write", None),
    ("evaluate/X/federated/after-tables", "sites/X/evaluation/federated/predictions.tsv"),
    ("report/after-html", "report/index.html"),
]
#: The chain of ``make test`` (FEDGLIOMA_KILL_RESUME=full runs :data:`FULL`): round 2 of site A onwards, each kind
#: of job of the federation, the external evaluation and the report (the preprocessing points cost a subject's
#: whole preprocessing: a copied run's stamps name other raw paths).
QUICK: list[tuple[str, str | None]] = [
    ("local_train/A/round-2/epoch-1/step-1", None),
    ("save_params/update/A/round-2/before-sidecar", "sites/A/federated/round-2/update.safetensors"),
    ("aggregate/round-2/after-model", "federated/round-2/global.safetensors"),
    ("validate_round/B/round-2/before-write", None),
    ("evaluate/X/federated/after-tables", "sites/X/evaluation/federated/predictions.tsv"),
    ("report/after-html", "report/index.html"),
]
FULL_RUN = os.environ.get("FEDGLIOMA_KILL_RESUME") == "full"
CHAIN = FULL if FULL_RUN else QUICK
#: Files that must come back byte-identical (globs under results/).
COMPARED = [
    "federated/round-*/global.safetensors",
    "federated/round-*/global.json",
    "federated/round-*/server_state.safetensors",
    "federated/final.json",
    "sites/*/federated/round-*/update.safetensors",
    "sites/*/federated/round-*/update.json",
    "sites/*/federated/round-*/local.safetensors",
    "sites/*/federated/round-*/validation.json",
    "sites/*/prep/*_train.npz",
    "sites/*/prep/training_set.tsv",
    "sites/X/evaluation/federated/predictions.tsv",
    "sites/X/evaluation/federated/metrics.json",
    "model/*.zip",
]
#: The temporaries of fedglioma.atomic (``.name.XXXXXXXX[suffix]``).
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}(\.[A-Za-z0-9.]+)?$")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_digest(path: Path) -> str:
    """sha256 of a file's bytes; of a training file (``.npz``), of its arrays (numpy stamps each zip member with
    the time it was written); of the bundle, of its members with the bundle's ``created`` time left out."""
    if path.suffix == ".npz":
        h = hashlib.sha256()
        with np.load(path, allow_pickle=False) as z:
            for k in sorted(z.files):
                a = z[k]
                h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()
    if path.suffix == ".zip":
        h = hashlib.sha256()
        with zipfile.ZipFile(path) as z:
            for name in sorted(z.namelist()):
                if name.endswith(("MODEL_CARD.md", "SHA256SUMS")):
                    continue  # the creation time, and sums of bundle.json
                data = z.read(name)
                if name.endswith("bundle.json"):
                    doc = json.loads(data)
                    doc.pop("created", None)
                    data = json.dumps(doc, sort_keys=True).encode()
                h.update(name.encode() + b"|" + hashlib.sha256(data).digest())
        return h.hexdigest()
    return _sha(path)


def digests(work: Path) -> dict[str, str]:
    """Digest (:func:`content_digest`) of every compared file of a run, by path under results/."""
    res = work / "results"
    return {str(p.relative_to(res)): content_digest(p) for g in COMPARED for p in sorted(res.glob(g))}


def snakemake(work: Path, *args: str, faults: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the workflow in ``work`` in a new session (a kill takes that process group only)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("FEDGLIOMA_FAULTS", None)
    if faults:
        env["FEDGLIOMA_FAULTS"] = faults
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False,
                          start_new_session=True)


def fired(work: Path, point: str) -> bool:
    """Whether a job log records the kill at ``point``."""
    return any(f"fault point {point}:" in p.read_text(errors="replace") for p in (work / "logs").rglob("*.log"))


@dataclass
class Chain:
    """What the kill/resume chain saw."""

    work: Path
    source: Path
    reference: dict[str, str]
    kills: list[tuple[str, int, bool]] = field(default_factory=list)  # point, returncode, logged
    #: point -> (the partial output, stderr of the plain command, which must refuse it)
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)
    final: subprocess.CompletedProcess | None = None


@pytest.fixture(scope="module")
def chain(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """Copy the reference, rewind one subject, then kill and resume along :data:`CHAIN`."""
    reference = digests(tiny_run)
    work = tmp_path_factory.mktemp("kill") / "run"
    # results/ (1.2 GB) by hard links: the workflow replaces its files by renaming (fedglioma.atomic) and Snakemake
    # deletes them, neither writes into one, so the reference stays as it is; logs and .snakemake are copied
    shutil.copytree(tiny_run, work, symlinks=True, ignore=shutil.ignore_patterns("results"))
    shutil.copytree(tiny_run / "results", work / "results", symlinks=True, copy_function=os.link)
    assert any(k.startswith("federated/round-2/global") for k in reference), sorted(reference)
    subject = sorted(p.name.removeprefix("sub-") for p in (work / "results/sites" / SITE / "prep").glob("sub-*")
                     if p.is_dir())[0]
    out = Chain(work, tiny_run, reference)
    if FULL_RUN:
        res = work / "results/sites" / SITE
        shutil.rmtree(res / "prep" / f"sub-{subject}")
        for f in (f"prep/sub-{subject}_train.npz", f"prep/sub-{subject}_grid.json", f"qc/sub-{subject}_qc.png",
                  f"qc/sub-{subject}_qc.json"):
            (res / f).unlink()
        # Snakemake does not remake a missing file whose consumers are up to date: force the subject's job (its
        # consumers follow, their inputs being newer)
        forced = f"results/sites/{SITE}/prep/sub-{subject}_train.npz"
    else:
        forced = f"results/sites/{SITE}/federated/round-2/update.safetensors"
    args: tuple[str, ...] = ("--forcerun", forced)
    for point, partial in CHAIN:
        point = point.format(subject=subject)
        r = snakemake(work, *args, faults=f"{point}=kill")
        out.kills.append((point, r.returncode, fired(work, point)))
        if r.returncode != -signal.SIGKILL:
            pytest.fail(f"the run with {point}=kill ended with {r.returncode}:\n{r.stderr[-4000:]}")
        if partial is not None:
            # the partial output exists, yet the plain command refuses it (Snakemake checks this before the lock)
            partial = "results/" + partial.format(subject=subject)
            assert (work / partial).exists(), partial
            refused = snakemake(work)
            out.refused[point] = (partial, refused.stderr if refused.returncode != 0 else "(it ran)")
        assert snakemake(work, "--unlock").returncode == 0
        args = ("--rerun-incomplete",)
    out.final = snakemake(work, "--rerun-incomplete")
    return out


def test_every_point_killed_the_workflow(chain: Chain) -> None:
    """Each run died by SIGKILL at its own fault point (the job's log names it)."""
    assert [(p, rc) for p, rc, _ in chain.kills] == [(p, -signal.SIGKILL) for p, _, _ in chain.kills]
    assert all(logged for _, _, logged in chain.kills), [p for p, _, logged in chain.kills if not logged]


def test_partial_outputs_are_refused(chain: Chain) -> None:
    """After a kill that left one output of a job written and another not, the plain command refuses to go on:
    the written one is listed as incomplete, never taken as an input."""
    assert chain.refused, "no partial-write point in the chain"
    for point, (partial, stderr) in chain.refused.items():
        assert "IncompleteFilesException" in stderr, (point, stderr[-3000:])
        listed = stderr.split("Incomplete files:", 1)[-1].split()
        assert partial in listed, (point, partial, stderr[-3000:])


def test_resumed_run_is_byte_identical(chain: Chain) -> None:
    """The resumed run finishes, and its models (every round), updates, validations, selection, training file of
    the rewound subject, external predictions, metrics and bundle equal the uninterrupted run's bytes."""
    assert chain.final is not None and chain.final.returncode == 0, chain.final and chain.final.stderr[-6000:]
    now = digests(chain.work)
    assert now.keys() == chain.reference.keys()
    assert {k for k in now if now[k] != chain.reference[k]} == set()
    final = json.loads((chain.work / "results/federated/final.json").read_text())
    model = f"federated/round-{final['round']}/global.safetensors"
    assert now[model] == chain.reference[model]
    assert digests(chain.source) == chain.reference, "the hard-linked reference run was written into"


def test_nothing_partial_is_left(chain: Chain) -> None:
    """No temporary of an atomic write is left anywhere, every parameter file matches its sidecar's sha256, and the
    sidecars record the thread counts the results depend on."""
    assert chain.final is not None and chain.final.returncode == 0
    temporaries = [p for p in (chain.work / "results").rglob(".*") if TEMPORARY.match(p.name)]
    assert temporaries == []
    for p in (chain.work / "results").rglob("*.safetensors"):
        side = json.loads(p.with_suffix(".json").read_text())
        assert side["sha256"] == _sha(p), p
    for p in (chain.work / "results/sites").glob("*/federated/round-*/update.json"):
        side = json.loads(p.read_text())
        assert side["threads"] == side["torch_threads"] == 2, p
    for p in (chain.work / "results/sites").glob("*/federated/round-*/validation.json"):
        assert json.loads(p.read_text())["torch_threads"] == 2, p
