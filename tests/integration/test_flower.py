"""The cross-institution mode on loopback: a real SuperLink (TLS on, SuperNode authentication on) and SuperNodes
started with ``fedglioma federation`` commands, each site in its own folder holding only what its own
``snakemake`` made (copied from the session's tiny run), the coordinator in another.

1. Two rounds over Flower give the Snakemake mode's bytes: every global model, every site's update and
   validation, and ``final.json``. A third SuperNode with a key the SuperLink does not know is refused.
2. A SuperNode killed in the middle of round 1: the round closes with the other site and records the dropout;
   the restarted SuperNode rejoins a later round.
3. Secure aggregation (Flower's SecAgg+): the coordinator receives no site's update, and its global model is
   FedAvg of the sites' updates within the stated quantisation bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.integration.tiny import BIN

pytest.importorskip("flwr")

TRAIN = ("A", "B")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pilot:
    """Flower daemons on loopback; every process is found again by its ``FLWR_HOME`` (under ``base``), so that
    the ones Flower starts detached (SuperExec, the apps) are stopped too."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, home: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, FLWR_HOME=str(self.base / home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        log = (self.base / f"{name}.log").open("ab")
        proc = subprocess.Popen([str(BIN / "fedglioma"), "federation", *args], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def cli(self, *args: str, home: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, FLWR_HOME=str(self.base / home), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        return subprocess.run([str(BIN / "fedglioma"), "federation", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def log(self, name: str) -> str:
        return (self.base / f"{name}.log").read_text(errors="replace")

    def kill_home(self, home: str) -> None:
        """SIGKILL every process whose FLWR_HOME is ``home`` (a SuperNode and what it started)."""
        want = f"FLWR_HOME={self.base / home}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if want in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGKILL)

    def stop(self) -> None:
        for home in {p.name for p in self.base.iterdir() if p.name.startswith("home-")}:
            self.kill_home(home)
        for proc in self.procs.values():
            with contextlib.suppress(OSError):
                proc.wait(timeout=10)


def wait_for(what: str, check, timeout: float = 120, pilot: Pilot | None = None, name: str = "") -> None:  # noqa: ANN001
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{pilot.log(name)[-3000:]}" if pilot else ""))


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def site_folder(tiny_run: Path, dest: Path, site: str, config: dict) -> Path:
    """What a site holds after its own ``snakemake`` up to the training set: its results folder without the
    federated rounds, its config and sites.tsv."""
    (dest / "config").mkdir(parents=True)
    shutil.copy(tiny_run / "config" / "sites.tsv", dest / "config" / "sites.tsv")
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(tiny_run / "results" / "sites" / site, dest / "results" / "sites" / site,
                    ignore=shutil.ignore_patterns("federated"))
    return dest


def coordinator_folder(tiny_run: Path, dest: Path, config: dict) -> Path:
    (dest / "config").mkdir(parents=True)
    shutil.copy(tiny_run / "config" / "sites.tsv", dest / "config" / "sites.tsv")
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def pilot(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pilot, int]]:
    """A SuperLink with the consortium's keys registered; a second, unregistered set of keys for an intruder."""
    from fedglioma.federation.pki import make_pki

    base = tmp_path_factory.mktemp("flower")
    with contextlib.chdir(tiny_run):
        make_pki("config/sites.tsv", base / "pki", server_name=["localhost", "127.0.0.1"])
        make_pki("config/sites.tsv", base / "pki-other", server_name=["localhost"])
    p = Pilot(base)
    port = free_port()
    p.start("superlink", "superlink", "--pki", str(base / "pki/coordinator"), "--state", str(base / "state"),
            "--host", "127.0.0.1", "--port", str(port), home="home-coordinator")
    try:
        wait_for("the SuperLink", lambda: listening(port), pilot=p, name="superlink")
        res = p.cli("register", "--pki", str(base / "pki/coordinator"), "--superlink", f"127.0.0.1:{port}",
                    home="home-coordinator", timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        assert all(f"site {s}: registered" in res.stdout for s in TRAIN), res.stdout
        yield p, port
    finally:
        p.stop()


def stop_sites(p: Pilot, *names: str) -> None:
    """Stop SuperNodes as a site stops them (SIGTERM: the SuperLink then lets their keys join again at once),
    then whatever they left."""
    for name in names:
        p.procs[name].terminate()
    for name in names:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.procs[name].wait(timeout=20)
        p.kill_home(f"home-{name}")


def start_site(p: Pilot, port: int, site: str, workdir: Path, name: str, *, pki: Path | None = None,
               retry_for: float = 300) -> subprocess.Popen[bytes]:
    return p.start(name, "supernode", "--site", site, "--pki", str(pki or p.base / "pki" / "sites" / site),
                   "--superlink", f"127.0.0.1:{port}", "--workdir", str(workdir), "--threads", "2",
                   "--port", str(free_port()), "--retry-for", str(retry_for), home=f"home-{name}")


def test_two_rounds_over_flower_give_the_snakemake_bytes(tiny_run: Path, pilot: tuple[Pilot, int]) -> None:
    p, port = pilot
    config = yaml.safe_load((tiny_run / "config" / "config.yaml").read_text())
    coord = coordinator_folder(tiny_run, p.base / "run1" / "coordinator", config)
    sites = {s: site_folder(tiny_run, p.base / "run1" / f"site-{s}", s, config) for s in TRAIN}
    for s, d in sites.items():
        start_site(p, port, s, d, f"run1-site-{s}")
    # a SuperNode that trusts the consortium's CA but holds a key the SuperLink never registered
    stranger = p.base / "stranger"
    stranger.mkdir()
    shutil.copy(p.base / "pki/sites/A/ca.crt", stranger / "ca.crt")
    shutil.copy(p.base / "pki-other/sites/A/supernode.key", stranger / "supernode.key")
    intruder = start_site(p, port, "A", sites["A"], "intruder", pki=stranger, retry_for=0)
    try:
        res = p.cli("run", "--workdir", str(coord), "--round-deadline", "600", "--round-timeout", "900",
                    "--join-timeout", "120", home="home-coordinator")
    finally:
        stop_sites(p, *(f"run1-site-{s}" for s in TRAIN))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:] + p.log("superlink")[-4000:]

    snk, fl = tiny_run / "results" / "federated", coord / "results" / "federated"
    for rnd in range(3):
        assert (fl / f"round-{rnd}/global.safetensors").read_bytes() == \
            (snk / f"round-{rnd}/global.safetensors").read_bytes(), f"global model of round {rnd}"
        if rnd:
            assert json.loads((fl / f"round-{rnd}/global.json").read_text()) == \
                json.loads((snk / f"round-{rnd}/global.json").read_text())
    assert (fl / "final.json").read_text() == (snk / "final.json").read_text()
    for s, d in sites.items():
        for rnd in (1, 2):
            ours = d / "results" / "sites" / s / "federated" / f"round-{rnd}"
            theirs = tiny_run / "results" / "sites" / s / "federated" / f"round-{rnd}"
            for f in ("update.safetensors", "local.safetensors", "validation.json"):
                assert (ours / f).read_bytes() == (theirs / f).read_bytes(), f"site {s} round {rnd} {f}"
            assert (fl / f"round-{rnd}/received/{s}/validation.json").read_bytes() == \
                (theirs / "validation.json").read_bytes()
        # nothing of another site reached this site's folder
        assert sorted(x.name for x in (d / "results" / "sites").iterdir()) == [s]

    wait_for("the intruder to be refused", lambda: intruder.poll() is not None, timeout=60)
    refused = p.log("intruder")
    assert intruder.returncode != 0 and "Exit Code: 305" in refused and "refused this SuperNode" in refused
    assert "CERTIFICATE_VERIFY_FAILED" not in refused  # TLS passed: the key was refused
    assert "No SuperNode found with the given public key" in p.log("superlink")


def test_a_supernode_killed_mid_round_is_recorded_and_rejoins(tiny_run: Path, pilot: tuple[Pilot, int]) -> None:
    p, port = pilot
    config = yaml.safe_load((tiny_run / "config" / "config.yaml").read_text())
    config["federated"] = {**config["federated"], "min_sites": 1, "rounds": 3}
    coord = coordinator_folder(tiny_run, p.base / "run2" / "coordinator", config)
    sites = {s: site_folder(tiny_run, p.base / "run2" / f"site-{s}", s, config) for s in TRAIN}
    for s, d in sites.items():
        start_site(p, port, s, d, f"run2-site-{s}")
    env = dict(os.environ, FLWR_HOME=str(p.base / "home-coordinator"), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    with (p.base / "run2.log").open("w") as log:
        run = subprocess.Popen([str(BIN / "fedglioma"), "federation", "run", "--workdir", str(coord),
                                "--round-deadline", "30", "--round-timeout", "600", "--join-timeout", "120"],
                               env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            got_model = sites["B"] / "results/federated/round-0/global.safetensors"
            wait_for("site B to receive round 1's model", got_model.is_file, timeout=300)
            p.kill_home("home-run2-site-B")  # mid-round: B is training
            time.sleep(2)
            start_site(p, port, "B", sites["B"], "run2-site-B-again")
            assert run.wait(timeout=900) == 0, (p.base / "run2.log").read_text()[-6000:]
        finally:
            with contextlib.suppress(OSError):
                os.killpg(run.pid, signal.SIGKILL)
            stop_sites(p, "run2-site-A", "run2-site-B-again")

    fl = coord / "results" / "federated"
    r1 = json.loads((fl / "round-1/global.json").read_text())
    assert [e["site"] for e in r1["sites"]] == ["A"]
    (gone,) = r1["excluded"]
    assert gone["site"] == "B" and gone["stage"] == "failed" and "no update before the round closed" in gone["reason"]
    # the restarted SuperNode is asked again and takes part (it can join once the SuperLink counted the killed
    # one gone, about a minute: round 2 or 3)
    later = [json.loads((fl / f"round-{r}/global.json").read_text()) for r in (2, 3)]
    assert any([e["site"] for e in g["sites"]] == ["A", "B"] for g in later), [g["excluded"] for g in later]
    # the site recorded the round it missed, as the workflow records a failed site
    missed = json.loads((sites["B"] / "results/sites/B/federated/round-1/update.json").read_text())
    assert missed["status"] == "failed"
    assert json.loads((fl / "final.json").read_text())["round"] in (1, 2, 3)


def test_secure_aggregation_is_fedavg_within_the_quantisation_bound(tiny_run: Path, pilot: tuple[Pilot, int]) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    from fedglioma.federated.aggregate import aggregate_files
    from fedglioma.federated.strategies import make_strategy
    from fedglioma.settings import FederatedConfig

    p, port = pilot
    config = yaml.safe_load((tiny_run / "config" / "config.yaml").read_text())
    config["federated"] = {**config["federated"], "rounds": 1}
    coord = coordinator_folder(tiny_run, p.base / "run3" / "coordinator", config)
    sites = {s: site_folder(tiny_run, p.base / "run3" / f"site-{s}", s, config) for s in TRAIN}
    for s, d in sites.items():
        start_site(p, port, s, d, f"run3-site-{s}")
    try:
        res = p.cli("run", "--workdir", str(coord), "--secure-aggregation", "--round-deadline", "600",
                    "--round-timeout", "900", "--join-timeout", "120", home="home-coordinator")
    finally:
        stop_sites(p, *(f"run3-site-{s}" for s in TRAIN))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]

    fl = coord / "results" / "federated"
    assert not (fl / "round-1" / "received").exists() or not list((fl / "round-1" / "received").rglob("*.safetensors"))
    side = json.loads((fl / "round-1/global.json").read_text())
    assert [e["site"] for e in side["sites"]] == list(TRAIN) and side["excluded"] == []
    bound = side["secure_aggregation"]["error_bound"]
    # plain FedAvg of the very updates the sites trained (they never left the sites)
    updates = [sites[s] / f"results/sites/{s}/federated/round-1/update.safetensors" for s in TRAIN]
    reference = p.base / "run3" / "fedavg.safetensors"
    aggregate_files(make_strategy(FederatedConfig(strategy="fedavg")), updates, fl / "round-0/global.safetensors",
                    reference, 1, sites=list(TRAIN), min_sites=2)
    ours, plain = load_file(fl / "round-1/global.safetensors"), load_file(reference)
    assert ours.keys() == plain.keys()
    diff = max(float(np.abs(ours[k].astype(np.float64) - plain[k]).max()) for k in ours)
    assert 0 < diff <= bound, (diff, bound)
    print(f"secure aggregation vs FedAvg: max |difference| {diff:.3g}, bound {bound:.3g}")
    # the sites validated the securely aggregated model, and the selection ran
    assert json.loads((fl / "round-1/validated.json").read_text())["sites"] == list(TRAIN)
    assert json.loads((fl / "final.json").read_text())["round"] == 1
