"""The cross-institution mode's roles on files: what a site and the coordinator do in a round, with the very step
functions the workflow's rules call (docs/federation.md).

Nothing here imports Flower. :mod:`fedglioma.federation.apps` carries bytes between these functions; everything a
role keeps lies in its own working directory, at the paths the Snakemake mode uses, so that a site's folder after
a Flower run is the folder a Snakemake run gives:

- a site (``SiteRole``) writes the global model it received to ``results/federated/round-{r}/global.safetensors``
  (and its sidecar) in its own folder, then runs :func:`fedglioma.train.steps.train_site_round` (rule
  ``local_train``) or :func:`fedglioma.train.steps.validate_site_round` (rule ``validate_round``) with the
  arguments the rule gives them, on its ``training_set`` manifest and ``labels.tsv``;
- the coordinator (``CoordinatorRole``) runs :func:`fedglioma.train.steps.init_model` (rule ``init_model``),
  :func:`fedglioma.federated.steps.aggregate_round` (rule ``aggregate``) on the updates it received, and
  :func:`fedglioma.federated.select.select_model` (rule ``select_model``) on the validation results it received.

What crosses the network is what the scope audit lets leave a site: the update (``update.safetensors`` and its
sidecar) and the site-aggregated validation JSON; and towards the sites only global models.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from contextlib import chdir
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedglioma.atomic import atomic_path, write_json
from fedglioma.errors import ConfigError, InputError

log = logging.getLogger(__name__)

#: config sections the coordinator and every site must hold alike: they define the network, its training and its
#: aggregation (the sections the rules ``local_train``, ``validate_round`` and ``aggregate`` pass)
SHARED_SECTIONS = ("model", "train", "federated", "endpoints", "attack")
#: the threads of a site's training and validation (rules ``local_train`` and ``validate_round``: ``threads: 2``)
SITE_THREADS = 2
#: the threads of the coordinator's steps (rules ``init_model`` and ``aggregate`` have no ``threads:``: 1)
COORDINATOR_THREADS = 1


# ---- paths: the workflow's (workflow/rules/common.smk) -------------------------------------------------------
def global_model(rnd: int) -> str:
    """The global model of round ``rnd`` (rule ``init_model``/``aggregate``)."""
    return f"results/federated/round-{rnd}/global.safetensors"


def site_round_dir(site: str, rnd: int) -> str:
    """A site's folder of round ``rnd`` (rules ``local_train`` and ``validate_round``)."""
    return f"results/sites/{site}/federated/round-{rnd}"


def training_set_manifest(site: str) -> str:
    """A site's training-set manifest (rule ``training_set``)."""
    return f"results/sites/{site}/prep/training_set.tsv"


def labels_table(site: str) -> str:
    """A site's labels (rule ``labels``)."""
    return f"results/sites/{site}/labels.tsv"


def received_dir(rnd: int, site: str) -> str:
    """Where the coordinator keeps what a site sent in round ``rnd``."""
    return f"results/federated/round-{rnd}/received/{site}"


# ---- what the two sides must agree on ------------------------------------------------------------------------
def config_digest(config: Mapping[str, Any]) -> str:
    """sha256 of the sections every party must hold alike (``SHARED_SECTIONS``), as canonical JSON."""
    shared = {k: config.get(k) for k in SHARED_SECTIONS}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Payload:
    """A parameter file as it travels: its bytes and its sidecar JSON (text)."""

    data: bytes
    sidecar: str

    @classmethod
    def read(cls, path: str | Path) -> Payload:
        from fedglioma.federated.exchange import sidecar_path

        return cls(Path(path).read_bytes(), sidecar_path(path).read_text())

    def write(self, path: Path, *, what: str) -> None:
        """Check the bytes against the sha256 their sidecar names, then write the file and its sidecar
        (atomically, the file first). A file already there with the same bytes is kept; a damaged one is never
        written."""
        from fedglioma.federated.exchange import sidecar_path

        try:
            side = json.loads(self.sidecar)
        except ValueError as exc:
            raise InputError(f"the {what} received has a sidecar that is not JSON ({exc})", file=path) from exc
        if not isinstance(side, dict) or side.get("sha256") != hashlib.sha256(self.data).hexdigest():
            raise InputError(f"the {what} received does not match the sha256 of its sidecar (damaged in transfer "
                             "or not a fedglioma parameter file)", file=path)
        side_path = sidecar_path(path)
        if path.is_file() and side_path.is_file() and side_path.read_text() == self.sidecar and \
                path.read_bytes() == self.data:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, suffix=path.suffix) as tmp:
            tmp.write_bytes(self.data)
        with atomic_path(side_path) as tmp:
            tmp.write_text(self.sidecar)


def _load(config_path: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    from fedglioma.settings import load_config

    return load_config(config_path, overrides=overrides).model_dump(mode="json")


def _train_sites(config: Mapping[str, Any], workdir: Path) -> list[str]:
    from fedglioma.config import load_sites

    path = Path(config["sites"])
    return [r.site for r in load_sites(path if path.is_absolute() else workdir / path) if r.role == "train"]


# ---- a site ----------------------------------------------------------------------------------------------------
@dataclass
class SiteRole:
    """One training site's part, in its own working directory (where it ran its ``snakemake`` up to the training
    set: ``results/sites/<site>/prep/training_set.tsv`` and ``results/sites/<site>/labels.tsv``)."""

    site: str
    workdir: Path
    config: dict[str, Any]
    threads: int = SITE_THREADS

    @classmethod
    def open(cls, site: str, workdir: str | Path, config_path: str | Path = "config/config.yaml",
             overrides: Sequence[str] = (), threads: int = SITE_THREADS) -> SiteRole:
        """The site ``site`` in ``workdir`` with its config (relative to ``workdir``); checks that sites.tsv
        names it a training site and that its training set exists."""
        workdir = Path(workdir).resolve()
        cpath = Path(config_path)
        config = _load(cpath if cpath.is_absolute() else workdir / cpath, overrides)
        if site not in _train_sites(config, workdir):
            raise ConfigError(f"site {site!r} is not a training site of {config['sites']} (in {workdir}). Fix: give "
                              f"the SuperNode the site ID of its row in sites.tsv (role train)")
        role = cls(site, workdir, config, threads)
        for need in (training_set_manifest(site), labels_table(site)):
            if not (workdir / need).is_file():
                raise InputError(f"{need} missing: the site has not prepared its training set", site=site,
                                 file=workdir / need,
                                 fix=f"run the site's own part first: snakemake --cores N {training_set_manifest(site)}"
                                     f" {labels_table(site)} (docs/federation.md)")
        return role

    @property
    def digest(self) -> str:
        return config_digest(self.config)

    @property
    def n_subjects(self) -> int:
        """The site's training subjects (training and validation split), a public count: secure aggregation
        scales the weights by the largest site's."""
        from fedglioma.train.steps import read_training_set

        with chdir(self.workdir):
            return len(read_training_set(training_set_manifest(self.site), site=self.site))

    def update_path(self, rnd: int) -> Path:
        return self.workdir / site_round_dir(self.site, rnd) / "update.safetensors"

    def _sections(self) -> dict[str, Any]:
        c = self.config
        return {"model_cfg": c["model"], "train_cfg": c["train"], "federated_cfg": c["federated"],
                "endpoints_cfg": c["endpoints"]}

    def _receive(self, rnd: int, model: Payload) -> None:
        try:
            side = json.loads(model.sidecar)
        except ValueError as exc:
            raise InputError(f"the global model of round {rnd} received has a sidecar that is not JSON ({exc})",
                             site=self.site, file=global_model(rnd)) from exc
        side = side if isinstance(side, dict) else {}
        if side.get("kind") != "global" or side.get("round") != rnd:
            raise InputError(f"the coordinator sent, as the global model of round {rnd}, a file whose sidecar says "
                             f"kind {side.get('kind')!r}, round {side.get('round')!r}", site=self.site,
                             file=global_model(rnd), fix="both ends must run the same fedglioma and config")
        model.write(self.workdir / global_model(rnd), what=f"global model of round {rnd}")

    def _fill_missed(self, rnd: int) -> None:
        """Rounds before ``rnd`` this site did not train in (its SuperNode was down) are recorded as failed, as
        the workflow records a site whose attempts all failed: an empty update and the site-local state carried
        over (:func:`fedglioma.train.steps.record_missed_round`). Training in round ``rnd`` then starts from them."""
        from fedglioma.train.steps import record_missed_round

        missing = [r for r in range(1, rnd) if not (self.workdir / site_round_dir(self.site, r) / "local.json").is_file()]
        for r in missing:
            d = site_round_dir(self.site, r)
            previous = f"{site_round_dir(self.site, r - 1)}/local.safetensors" if r > 1 else None
            record_missed_round(global_model(rnd - 1), f"{d}/update.safetensors", f"{d}/local.safetensors", previous,
                                site=self.site, round=r, federated_cfg=self.config["federated"],
                                train_cfg=self.config["train"],
                                reason="the site's SuperNode did not take part in this round")
            log.warning("site %s: recorded round %d as missed (no SuperNode then)", self.site, r)

    def train(self, rnd: int, previous_global: Payload) -> Payload:
        """Round ``rnd``: local training from the global model of round ``rnd - 1`` (rule ``local_train``).
        Returns the update and its sidecar (``status: failed`` when every attempt failed, as in the workflow)."""
        from fedglioma.threads import set_threads
        from fedglioma.train.steps import train_site_round

        with chdir(self.workdir):  # the step functions take the workflow's relative paths
            self._receive(rnd - 1, previous_global)
            self._fill_missed(rnd)
            d = site_round_dir(self.site, rnd)
            set_threads(self.threads)
            train_site_round(global_model(rnd - 1), training_set_manifest(self.site), labels_table(self.site),
                             f"{d}/update.safetensors", f"{d}/update.json", f"{d}/local.safetensors",
                             f"{d}/local.json", site=self.site, round=rnd, **self._sections(),
                             attack_cfg=self.config["attack"],
                             local_state=f"{site_round_dir(self.site, rnd - 1)}/local.safetensors" if rnd > 1 else None,
                             threads=self.threads)
            return Payload.read(f"{d}/update.safetensors")

    def validate(self, rnd: int, model: Payload) -> str:
        """Round ``rnd``'s global model on the site's validation split (rule ``validate_round``); returns the
        site-aggregated validation JSON (text)."""
        from fedglioma.threads import set_threads
        from fedglioma.train.steps import validate_site_round

        with chdir(self.workdir):  # the step functions take the workflow's relative paths
            self._receive(rnd, model)
            d = site_round_dir(self.site, rnd)
            if not Path(f"{d}/local.json").is_file():
                raise InputError(f"site {self.site} holds no local state of round {rnd} (it did not train then) and "
                                 f"cannot validate that round", site=self.site, file=f"{d}/local.json")
            set_threads(self.threads)
            validate_site_round(global_model(rnd), training_set_manifest(self.site), labels_table(self.site),
                                f"{d}/validation.json", site=self.site, round=rnd, **self._sections(),
                                local_state=f"{d}/local.safetensors", threads=self.threads)
            return Path(f"{d}/validation.json").read_text()


# ---- the coordinator -------------------------------------------------------------------------------------------
@dataclass
class CoordinatorRole:
    """The coordinator's part, in its own working directory: the global models, the server state, what the sites
    sent, the selection. ``sites``: the training sites of its sites.tsv, in order (the workflow's order)."""

    workdir: Path
    config: dict[str, Any]
    sites: list[str]

    @classmethod
    def open(cls, workdir: str | Path, config_path: str | Path = "config/config.yaml",
             overrides: Sequence[str] = ()) -> CoordinatorRole:
        workdir = Path(workdir).resolve()
        cpath = Path(config_path)
        config = _load(cpath if cpath.is_absolute() else workdir / cpath, overrides)
        return cls(workdir, config, _train_sites(config, workdir))

    @property
    def digest(self) -> str:
        return config_digest(self.config)

    @property
    def rounds(self) -> int:
        return int(self.config["federated"]["rounds"])

    @property
    def min_sites(self) -> int:
        return min(int(self.config["federated"]["min_sites"]), len(self.sites))

    def path(self, relative: str) -> Path:
        return self.workdir / relative

    def init(self) -> Payload:
        """The round-0 model (rule ``init_model``), made once."""
        from fedglioma.threads import set_threads
        from fedglioma.train.steps import init_model

        set_threads(COORDINATOR_THREADS)
        with chdir(self.workdir):  # the step functions take the workflow's relative paths
            if not Path(global_model(0)).with_suffix(".json").is_file():
                init_model(global_model(0), str(Path(global_model(0)).with_suffix(".json")),
                           model_cfg=self.config["model"], train_cfg=self.config["train"])
            return Payload.read(global_model(0))

    def model(self, rnd: int) -> Payload:
        return Payload.read(self.path(global_model(rnd)))

    def done(self, rnd: int) -> bool:
        """Round ``rnd`` aggregated and its validation closed (``validated.json``): a restarted coordinator goes on
        after the last such round."""
        return self.path(f"results/federated/round-{rnd}/validated.json").is_file()

    def receive_update(self, rnd: int, site: str, update: Payload) -> None:
        update.write(self.path(received_dir(rnd, site)) / "update.safetensors", what=f"update of site {site}")

    def record_missing_update(self, rnd: int, site: str, reason: str) -> None:
        """A site that sent no update this round: the round records it as failed with ``reason`` (the workflow's
        failed-site rule, :func:`fedglioma.federated.aggregate.aggregate_files`)."""
        from fedglioma.federated.exchange import save_params

        save_params(self.path(received_dir(rnd, site)) / "update.safetensors", {},
                    {"kind": "update", "status": "failed", "round": rnd, "site": site, "reason": reason,
                     "attempts": 0})

    def aggregate(self, rnd: int) -> dict[str, Any]:
        """Round ``rnd``'s aggregation (rule ``aggregate``) of what every site sent or was recorded as."""
        from fedglioma.federated.steps import aggregate_round
        from fedglioma.threads import set_threads

        set_threads(COORDINATOR_THREADS)
        with chdir(self.workdir):  # the step functions take the workflow's relative paths
            base = f"results/federated/round-{rnd}"
            updates = [f"{received_dir(rnd, s)}/update.safetensors" for s in self.sites]
            return aggregate_round(updates, [str(Path(u).with_suffix(".json")) for u in updates],
                                   global_model(rnd - 1), global_model(rnd), f"{base}/global.json",
                                   f"{base}/server_state.safetensors", f"{base}/server_state.json", round=rnd,
                                   federated_cfg=self.config["federated"], sites=self.sites,
                                   previous_state=f"results/federated/round-{rnd - 1}/server_state.safetensors"
                                   if rnd > 1 else None)

    def receive_validation(self, rnd: int, site: str, text: str) -> None:
        """Keep site ``site``'s validation JSON of round ``rnd`` (select_model reads and checks it whole)."""
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InputError(f"validation of round {rnd} is not JSON ({exc})", site=site) from exc
        if not isinstance(doc, dict) or doc.get("site") != site or doc.get("round") != rnd:
            raise InputError(f"the validation received is not site {site}'s of round {rnd}", site=site)
        path = self.path(received_dir(rnd, site)) / "validation.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)

    def close_validation(self, rnd: int, validated: Sequence[str], missing: Mapping[str, str]) -> None:
        write_json(self.path(f"results/federated/round-{rnd}/validated.json"),
                   {"round": rnd, "sites": list(validated), "missing": dict(missing)})

    def write_secure_global(self, rnd: int, mean: Sequence[Any], sites: Mapping[str, int], *, quorum: int,
                            failures: int, absent: Sequence[str], secure: Mapping[str, Any]) -> dict[str, Any]:
        """The global model of round ``rnd`` from secure aggregation's weighted mean of the shared parameters
        (sorted by name, as :func:`fedglioma.federation.secure.shared_arrays` sends them); site-local parameters
        come from the previous global model, as in :func:`fedglioma.federated.aggregate.aggregate_files`."""
        import torch

        from fedglioma.federated.exchange import load_params, save_params
        from fedglioma.federated.params import split_params

        fed = self.config["federated"]
        prev, prev_side = load_params(self.path(global_model(rnd - 1)))
        shared, local = split_params(prev, fed["site_local_patterns"])
        names = sorted(shared)
        if len(mean) != len(names):
            raise ConfigError(f"round {rnd}: secure aggregation returned {len(mean)} arrays for {len(names)} shared "
                              "parameters: every site must run the same fedglioma and config")
        tensors = {}
        for name, arr in zip(names, mean, strict=True):
            t = torch.from_numpy(arr).to(shared[name].dtype)
            if tuple(t.shape) != tuple(shared[name].shape):
                raise ConfigError(f"round {rnd}: secure aggregation returned shape {tuple(t.shape)} for {name}, "
                                  f"expected {tuple(shared[name].shape)}")
            tensors[name] = t
        side = {"kind": "global", "round": rnd, "previous_sha256": prev_side.get("sha256"),
                "strategy": fed["strategy"], "model": prev_side.get("model"),
                "site_local_patterns": list(fed["site_local_patterns"]), "quorum": quorum,
                "n_train": int(sum(sites.values())),
                "sites": [{"site": s, "n_train": n} for s, n in sorted(sites.items())],
                "excluded": [{"site": s, "stage": "failed",
                              "reason": "took no part in every stage of secure aggregation"} for s in absent],
                "failures": failures, "secure_aggregation": dict(secure)}
        out = save_params(self.path(global_model(rnd)), {**tensors, **local}, side)
        base = self.path(f"results/federated/round-{rnd}")
        save_params(base / "server_state.safetensors", {}, {"kind": "server_state", "round": rnd,
                                                            "strategy": fed["strategy"]})
        return out

    def select(self) -> dict[str, Any]:
        """The final round and thresholds (rule ``select_model``) from every validation received."""
        from fedglioma.federated.select import select_model

        with chdir(self.workdir):  # the step functions take the workflow's relative paths
            metrics = [f"{received_dir(r, s)}/validation.json" for r in range(1, self.rounds + 1) for s in self.sites
                       if Path(f"{received_dir(r, s)}/validation.json").is_file()]
            return select_model(metrics, "results/federated/final.json",
                                model_template="results/federated/round-{round}/global.safetensors")


__all__ = ["COORDINATOR_THREADS", "SHARED_SECTIONS", "SITE_THREADS", "CoordinatorRole", "Payload", "SiteRole", "config_digest"]
