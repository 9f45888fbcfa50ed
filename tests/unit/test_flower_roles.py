"""The cross-institution mode without daemons: payloads, when a round closes, who joins, and the coordinator's
round on files with a site that sent nothing (the integration test runs the real SuperLink and SuperNodes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402

from fedglioma.errors import ConfigError, InputError  # noqa: E402
from fedglioma.federation.apps import Deadlines, Roster, collect, pack, unpack  # noqa: E402
from fedglioma.federation.roles import CoordinatorRole, Payload, config_digest  # noqa: E402
from tests.integration.tiny import TINY_CONFIG, write_tiny  # noqa: E402


def payload(data: bytes = b"weights") -> Payload:
    return Payload(data, json.dumps({"sha256": hashlib.sha256(data).hexdigest(), "round": 1}))


def test_payload_travels_as_raw_bytes_and_is_checked(tmp_path: Path) -> None:
    p = payload(bytes(range(256)) * 10)
    content = pack(p, round=ConfigRecord({"round": 1}))
    assert content["file"]["bytes"].stype == "raw"
    assert unpack(content) == p
    p.write(tmp_path / "m.safetensors", what="model")
    assert (tmp_path / "m.safetensors").read_bytes() == p.data
    damaged = Payload(p.data[:-1] + b"\0", p.sidecar)
    with pytest.raises(InputError, match="does not match the sha256"):
        damaged.write(tmp_path / "n.safetensors", what="model")
    assert not (tmp_path / "n.safetensors").exists() and not (tmp_path / "n.json").exists()
    # an array numpy would have to load (or unpickle) is not a parameter file
    bad = RecordDict({"file": ArrayRecord({"bytes": Array("float32", (1,), "numpy.ndarray", b"1234")}),
                      "sidecar": ConfigRecord({"text": "{}"})})
    with pytest.raises(ConfigError, match="without a parameter file"):
        unpack(bad)


def test_config_digest_covers_the_shared_sections_only() -> None:
    a = {"model": {"width": 4}, "train": {}, "federated": {"rounds": 2}, "endpoints": {}, "attack": {},
         "sites": "config/sites.tsv", "preprocess": {"x": 1}}
    assert config_digest(a) == config_digest({**a, "sites": "other.tsv", "preprocess": {"x": 2}})
    assert config_digest(a) != config_digest({**a, "federated": {"rounds": 3}})


@pytest.fixture
def in_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower makes messages only inside a run (its task identity): as a ServerApp process has it."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """Replies become visible at given (fake) times: ``due[site]`` lists, per message sent to the site, when its
    reply arrives and which error it carries (``None``, ``"failed"`` or ``"unavailable"``); ``back`` is when an
    unavailable node is online again."""

    def __init__(self, due: dict[str, list[tuple[float, str | None]]], clock: list[float],
                 back: dict[int, float] | None = None) -> None:
        self.due, self.clock, self.back = due, clock, back or {}
        self.sent: dict[str, tuple[str, int]] = {}  # message ID -> (site, how many sent to it before)
        self.nodes = {1: "A", 2: "B", 3: "C"}

    def push_messages(self, msgs: Iterable[Message]) -> list[str]:
        ids = []
        for m in msgs:
            site = self.nodes[m.metadata.dst_node_id]
            n = sum(s == site for s, _ in self.sent.values())
            self.sent[f"{site}{n}"] = (site, n)
            ids.append(f"{site}{n}")
        return ids

    def get_node_ids(self) -> list[int]:
        return [n for n in self.nodes if self.back.get(n, 0.0) <= self.clock[0]]

    def pull_messages(self, ids: Iterable[str]) -> list[FakeReply]:
        out = []
        for mid in ids:
            site, n = self.sent[mid]
            plan = self.due.get(site, [])
            if n < len(plan) and plan[n][0] <= self.clock[0]:
                out.append(FakeReply(mid, plan[n][1]))
        return out


class FakeReply:
    def __init__(self, mid: str, error: str | None) -> None:
        from flwr.common.constant import ErrorCode

        self.metadata = type("M", (), {"reply_to_message_id": mid})()
        code = ErrorCode.NODE_UNAVAILABLE if error == "unavailable" else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        self.error = type("E", (), {"code": code, "reason": f"{error} here"})() if error else None

    def has_error(self) -> bool:
        return self.error is not None


def run_collect(due: dict[str, list[tuple[float, str | None]]], quorum: int,
                back: dict[int, float] | None = None) -> tuple[set[str], dict[str, str], float]:
    now = [0.0]
    messages = {s: Message(RecordDict(), dst_node_id=n, message_type="train") for n, s in ((1, "A"), (2, "B"),
                                                                                            (3, "C"))}

    def sleep(s: float) -> None:
        now[0] += s

    got, away = collect(FakeGrid(due, now, back), messages, 0.0, Deadlines(deadline=10, timeout=100, join=1),
                        quorum, clock=lambda: now[0], sleep=sleep)
    return set(got), away, now[0]


@pytest.mark.usefixtures("in_a_run")
def test_a_round_closes_at_the_deadline_once_the_quorum_replied() -> None:
    ok = None
    # everyone early: closes at once
    assert run_collect({"A": [(1, ok)], "B": [(2, ok)], "C": [(3, ok)]}, 2) == ({"A", "B", "C"}, {}, 3.0)
    # C never answers: closes at the deadline with A and B
    assert run_collect({"A": [(1, ok)], "B": [(2, ok)]}, 2) == ({"A", "B"}, {}, 10.0)
    # quorum 2 but only A by the deadline: waits for B, then closes
    assert run_collect({"A": [(1, ok)], "B": [(30, ok)]}, 2) == ({"A", "B"}, {}, 30.0)
    # a failed site counts as a reply but not towards the quorum; the timeout ends the wait
    assert run_collect({"A": [(1, ok)], "B": [(2, "failed")]}, 2) == ({"A", "B"}, {}, 100.0)
    # B's SuperNode drops out and is back at 5 s: it is sent the message again and answers
    assert run_collect({"A": [(1, ok)], "B": [(2, "unavailable"), (7, ok)], "C": [(1, ok)]}, 3,
                       back={2: 5.0}) == ({"A", "B", "C"}, {}, 7.0)
    # ... not back before the deadline: the round closes without it, saying why
    sites, away, t = run_collect({"A": [(1, ok)], "B": [(2, "unavailable")], "C": [(1, ok)]}, 2,
                                 back={2: 50.0})
    assert sites == {"A", "C"} and t == 10.0 and "unavailable" in away["B"]


class QueryGrid:
    def __init__(self, answers: dict[int, tuple[str, str]]) -> None:
        self.answers = answers

    def get_node_ids(self) -> list[int]:
        return list(self.answers)

    def send_and_receive(self, msgs: list[Message], timeout: float) -> list[object]:
        out = []
        for m in msgs:
            site, digest = self.answers[m.metadata.dst_node_id]
            out.append(QueryReply(m.metadata.dst_node_id, site, digest))
        return out


class QueryReply:
    def __init__(self, node: int, site: str, digest: str) -> None:
        self.metadata = type("M", (), {"src_node_id": node})()
        self.content = {"site": {"site": site, "digest": digest}}

    def has_error(self) -> bool:
        return False


@pytest.fixture
def coordinator(tmp_path: Path) -> CoordinatorRole:
    work = write_tiny(tmp_path, sites=[("A", "train"), ("B", "train"), ("X", "external")])
    return CoordinatorRole.open(work)


@pytest.mark.usefixtures("in_a_run")
def test_roster_takes_each_training_site_once_with_the_same_config(coordinator: CoordinatorRole) -> None:
    d = coordinator.digest
    roster = Roster()
    roster.discover(QueryGrid({1: ("A", d), 2: ("A", d), 3: ("X", d), 4: ("B", "other"), 5: ("Q", d)}),
                    coordinator, timeout=1)
    assert roster.nodes == {"A": 1}
    assert "second SuperNode claims site A" in roster.refused[2]
    assert "not a training site" in roster.refused[3] and "not a training site" in roster.refused[5]
    assert "config differs" in roster.refused[4]


def test_a_site_that_sent_nothing_is_left_out_of_the_round_with_the_reason(coordinator: CoordinatorRole) -> None:
    """The coordinator's round on files: A's update (trained by the workflow's own step function at a site
    folder), B recorded as missing; the round aggregates A alone under quorum 1 and names B and why."""
    from fedglioma.federation.roles import SiteRole

    cfg = yaml.safe_load((coordinator.workdir / "config/config.yaml").read_text())
    assert cfg["federated"] == TINY_CONFIG["federated"]
    coordinator.config["federated"]["min_sites"] = 1
    start = coordinator.init()
    assert (coordinator.workdir / "results/federated/round-0/global.json").is_file()
    # a site's update without training: the global model itself, as an update of site A
    from fedglioma.federated.exchange import load_params, save_params

    tensors, side = load_params(coordinator.workdir / "results/federated/round-0/global.safetensors")
    upd = coordinator.workdir / "a-update.safetensors"
    save_params(upd, tensors, {"kind": "update", "round": 1, "site": "A", "n_train": 2,
                               "global_sha256": side["sha256"]})
    coordinator.receive_update(1, "A", Payload.read(upd))
    coordinator.record_missing_update(1, "B", "no update before the round closed (20 s)")
    out = coordinator.aggregate(1)
    assert [e["site"] for e in out["excluded"]] == ["B"]
    assert "no update before the round closed" in out["excluded"][0]["reason"]
    assert start.data != b""
    # a site refuses to act for a site its sites.tsv does not train
    with pytest.raises(ConfigError, match="not a training site"):
        SiteRole.open("X", coordinator.workdir)
    with pytest.raises(InputError, match="has not prepared its training set"):
        SiteRole.open("A", coordinator.workdir)


def test_secure_aggregation_refuses_what_needs_single_updates() -> None:
    from fedglioma.federation.secure import check_config, error_bound

    base = {"strategy": "fedavg", "update_norm_bound": None, "update_min_cosine": None}
    check_config({"federated": base})
    check_config({"federated": {**base, "strategy": "fedprox"}})
    for strategy in ("median", "trimmed_mean", "multi_krum", "fedadam"):
        with pytest.raises(ConfigError, match=f"strategy '{strategy}' needs each site's update"):
            check_config({"federated": {**base, "strategy": strategy}})
    with pytest.raises(ConfigError, match="update_norm_bound .*; federated.update_min_cosine"):
        check_config({"federated": {**base, "update_norm_bound": 3.0, "update_min_cosine": 0.0}})
    # two equal sites: one quantisation step (16 / 2**22) each over a total weight of 2, plus float32 rounding
    assert error_bound([2, 2], 2) == pytest.approx(2 * 16 / 2**22 / 2 + 8 * 2.0**-23)
