"""The Flower apps of the cross-institution mode (Flower 1.42 Message API; docs/federation.md).

- ``client``: the ClientApp a site's SuperNode runs. ``query`` answers who it is (its site ID and the digest of
  its shared config sections); ``train`` and ``evaluate`` run the site's round (:class:`~fedglioma.federation.
  roles.SiteRole`) with the workflow's own step functions. The SuperNode's ``--node-config`` gives ``site``,
  ``workdir``, ``config`` and ``threads``.
- ``server``: the ServerApp the coordinator submits with ``flwr run``. It drives the rounds itself
  (:func:`run_federation`): a round closes when every site replied, or when the deadline passed and
  ``federated.min_sites`` updates arrived, or at the round timeout; a site that sent nothing is recorded in the
  round's sidecar as failed, with the reason, and is asked again in the next round. ``run_config`` gives
  ``workdir``, ``config``, ``round-deadline``, ``round-timeout``, ``join-timeout``.

Payloads are raw bytes: a parameter file travels as one ``uint8`` :class:`flwr.app.Array` of stype ``raw``
(never ``numpy.load``-ed, never unpickled) with its sidecar as text; the receiver checks the sha256.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedglioma.atomic import write_json
from fedglioma.errors import ConfigError, FedgliomaError
from fedglioma.federation.roles import CoordinatorRole, Payload, SiteRole, global_model, received_dir
from fedglioma.federation.secure import check_config, fit_reply, secure_mod, secure_round

log = logging.getLogger("fedglioma.federation")

#: the ServerApp's outcome, written by the coordinator at the end (``fedglioma federation run`` waits for it)
OUTCOME = "results/federated/federation.json"
POLL_S = 0.5


# ---- payloads --------------------------------------------------------------------------------------------------
def pack(payload: Payload, **records: ConfigRecord) -> RecordDict:
    """A parameter file and its sidecar as a message's content (with further ``records``)."""
    return RecordDict({"file": ArrayRecord({"bytes": Array("uint8", (len(payload.data),), "raw", payload.data)}),
                       "sidecar": ConfigRecord({"text": payload.sidecar}), **records})


def unpack(content: RecordDict) -> Payload:
    """The parameter file of a message's content (checked by :meth:`Payload.write` against its sidecar)."""
    try:
        array = content["file"]["bytes"]
        if array.stype != "raw" or array.dtype != "uint8":
            raise KeyError("file.bytes is not a raw byte array")
        return Payload(bytes(array.data), str(content["sidecar"]["text"]))
    except KeyError as exc:
        raise ConfigError(f"a message without a parameter file ({exc}): both ends must run the same "
                          "fedglioma") from exc


def _role(context: Context) -> SiteRole:
    cfg = context.node_config
    missing = [k for k in ("site", "workdir") if k not in cfg]
    if missing:
        raise ConfigError(f"the SuperNode's --node-config lacks {', '.join(missing)}. Fix: start it with "
                          "`fedglioma federation supernode` (docs/federation.md)")
    return SiteRole.open(str(cfg["site"]), str(cfg["workdir"]), str(cfg.get("config", "config/config.yaml")),
                         threads=int(cfg.get("threads", 2)))


# ---- the ClientApp ---------------------------------------------------------------------------------------------
client = ClientApp(mods=[secure_mod])


@client.query()
def _hello(msg: Message, context: Context) -> Message:
    role = _role(context)
    return Message(RecordDict({"site": ConfigRecord({"site": role.site, "digest": role.digest,
                                                     "n_subjects": role.n_subjects})}), reply_to=msg)


def _checked(msg: Message, role: SiteRole, record: str = "round") -> int:
    cfg = msg.content[record]
    if str(cfg["digest"]) != role.digest:
        raise ConfigError(f"site {role.site}: the coordinator's config differs from this site's in the sections "
                          "model, train, federated, endpoints or attack. Fix: use the consortium's config")
    return int(cfg["round"])


@client.train()
def _train(msg: Message, context: Context) -> Message:
    role = _role(context)
    if "fitins.config" in msg.content.config_records:  # a SecAgg+ round: only the masked sum leaves the site
        cfg = msg.content["fitins.config"]
        rnd = _checked(msg, role, "fitins.config")
        update = role.train(rnd, Payload(bytes(cfg["model"]), str(cfg["sidecar"])))
        side = json.loads(update.sidecar)
        if side.get("status") == "failed":
            raise ConfigError(f"site {role.site}, round {rnd}: training failed: {side.get('reason')}")
        return Message(fit_reply(str(role.update_path(rnd)), int(side["n_train"])), reply_to=msg)
    rnd = _checked(msg, role)
    update = role.train(rnd, unpack(msg.content))
    return Message(pack(update), reply_to=msg)


@client.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    role = _role(context)
    rnd = _checked(msg, role)
    text = role.validate(rnd, unpack(msg.content))
    return Message(RecordDict({"validation": ConfigRecord({"text": text})}), reply_to=msg)


# ---- the ServerApp ---------------------------------------------------------------------------------------------
@dataclass
class Deadlines:
    """When a round closes (seconds from its start): at ``deadline`` once the quorum replied, at ``timeout``
    whatever arrived; ``join``: how long the first round waits for every site to join."""

    deadline: float = 3600.0
    timeout: float = 6 * 3600.0
    join: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.deadline <= self.timeout:
            raise ConfigError(f"round deadline {self.deadline} s and timeout {self.timeout} s: need "
                              "0 < deadline <= timeout")


@dataclass
class Roster:
    """Which SuperNode is which site (each answers ``query`` with its site ID and config digest)."""

    nodes: dict[str, int] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)
    n_subjects: dict[str, int] = field(default_factory=dict)

    def discover(self, grid: Grid, coord: CoordinatorRole, timeout: float) -> None:
        """Ask every SuperNode not yet known who it is."""
        known = set(self.nodes.values()) | set(self.refused)
        new = [n for n in grid.get_node_ids() if n not in known]
        if not new:
            return
        msgs = [Message(RecordDict(), dst_node_id=n, message_type="query", ttl=timeout) for n in new]
        for reply in grid.send_and_receive(msgs, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("SuperNode %s could not say which site it is: %s", node, reply.error.reason)
                continue
            site, digest = str(reply.content["site"]["site"]), str(reply.content["site"]["digest"])
            if site not in coord.sites:
                self.refused[node] = f"site {site} is not a training site of the coordinator's sites.tsv"
            elif site in self.nodes and self.nodes[site] != node:
                self.refused[node] = f"a second SuperNode claims site {site} (first: node {self.nodes[site]})"
            elif digest != coord.digest:
                self.refused[node] = (f"site {site}'s config differs from the coordinator's in the sections model, "
                                      "train, federated, endpoints or attack")
            else:
                self.nodes[site] = node
                self.n_subjects[site] = int(reply.content["site"].get("n_subjects", 1))
                log.info("site %s joined (SuperNode %s)", site, node)
                continue
            log.error("SuperNode %s left out: %s", node, self.refused[node])


def collect(grid: Grid, messages: Mapping[str, Message], start: float, deadlines: Deadlines, quorum: int,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
            ) -> tuple[dict[str, Message], dict[str, str]]:
    """Send ``messages`` (site -> message) and collect the replies by site: until every site replied, or the
    deadline passed with ``quorum`` good replies, or the timeout. A site whose SuperNode the SuperLink reports
    unavailable (it stopped sending heartbeats) is sent its message again when it is back before the deadline.
    Returns the replies and, for the sites without one, why."""
    sent = dict(zip(grid.push_messages(list(messages.values())), messages, strict=True))  # message ID -> site
    replies: dict[str, Message] = {}
    away: dict[str, str] = {}  # site -> why, while its SuperNode is unavailable
    while True:
        pending = [m for m, s in sent.items() if s not in replies and s not in away]
        if pending:
            for reply in grid.pull_messages(pending):
                site = sent.pop(reply.metadata.reply_to_message_id, None)
                if site is None:
                    continue
                if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                    away[site] = f"its SuperNode was unavailable ({reply.error.reason})"
                else:
                    replies[site] = reply
        elapsed = clock() - start
        if away and elapsed < deadlines.deadline:
            online = set(grid.get_node_ids())
            back = [s for s in away if messages[s].metadata.dst_node_id in online]
            if back:
                for mid, site in zip(grid.push_messages([_again(messages[s]) for s in back]), back, strict=True):
                    sent[mid] = site
                    log.info("site %s is back: sent its message again", site)
                    del away[site]
        good = sum(not r.has_error() for r in replies.values())
        if len(replies) == len(messages) or (elapsed >= deadlines.deadline and good >= quorum) or \
                elapsed >= deadlines.timeout:
            return replies, away
        sleep(POLL_S)


def _again(msg: Message) -> Message:
    """A new message with ``msg``'s content and destination (a message is sent once)."""
    meta = msg.metadata
    return Message(msg.content, dst_node_id=meta.dst_node_id, message_type=meta.message_type, ttl=meta.ttl,
                   group_id=meta.group_id)


def _error(reply: Message) -> str:
    return f"the site's ClientApp failed: {reply.error.reason}"


def run_federation(grid: Grid, coord: CoordinatorRole, deadlines: Deadlines, *, secure: Context | None = None,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Every round of the federation, from the first round not yet done (a restarted coordinator goes on), then
    the model selection. ``secure``: the ServerApp's context, to train every round under SecAgg+
    (:mod:`fedglioma.federation.secure`). Returns ``final.json``'s content."""
    roster = Roster()
    start = clock()
    while True:
        roster.discover(grid, coord, timeout=min(60.0, deadlines.join))
        if len(roster.nodes) == len(coord.sites) or (clock() - start >= deadlines.join
                                                     and len(roster.nodes) >= coord.min_sites):
            break
        if clock() - start >= deadlines.join + deadlines.timeout:
            raise ConfigError(f"only {sorted(roster.nodes)} of the training sites {coord.sites} joined within "
                              f"{deadlines.join + deadlines.timeout:.0f} s (quorum {coord.min_sites})")
        sleep(1.0)
    previous = coord.init()
    for rnd in range(1, coord.rounds + 1):
        if coord.done(rnd):
            previous = coord.model(rnd)
            log.info("round %d: done before (restarted coordinator)", rnd)
            continue
        roster.discover(grid, coord, timeout=30.0)
        t0 = clock()
        common = ConfigRecord({"round": rnd, "digest": coord.digest})
        aggregated = coord.path(global_model(rnd)).with_suffix(".json").is_file()  # a restarted coordinator
        if secure is not None and not aggregated:
            side = secure_round(grid, secure, coord, roster.nodes, rnd, previous, roster.n_subjects,
                                timeout=deadlines.timeout)
            log.info("round %d: secure aggregation of %s (error bound %.3g per parameter)", rnd,
                     ", ".join(e["site"] for e in side["sites"]), side["secure_aggregation"]["error_bound"])
        elif not aggregated:
            out = _messages(roster, pack(previous, round=common), "train", rnd, deadlines)
            replies, away = collect(grid, out, t0, deadlines, coord.min_sites, clock=clock, sleep=sleep)
            for site in coord.sites:
                reply = replies.get(site)
                if reply is None:
                    why = ("its SuperNode was not connected" if site not in roster.nodes else
                           f"no update before the round closed ({clock() - t0:.0f} s; deadline "
                           f"{deadlines.deadline:.0f} s, timeout {deadlines.timeout:.0f} s)"
                           + (f": {away[site]}" if site in away else ""))
                    coord.record_missing_update(rnd, site, why)
                elif reply.has_error():
                    coord.record_missing_update(rnd, site, _error(reply))
                else:
                    coord.receive_update(rnd, site, unpack(reply.content))
            coord.aggregate(rnd)
        previous = coord.model(rnd)
        t1 = clock()
        out = _messages(roster, pack(previous, round=common), "evaluate", rnd, deadlines,
                        only=_delivered(coord, rnd))
        replies, away = collect(grid, out, t1, deadlines, len(out), clock=clock, sleep=sleep)
        validated, missing = [], {}
        for site in (s for s in coord.sites if s in out):  # sites.tsv order, not the order they joined in
            reply = replies.get(site)
            if reply is None or reply.has_error():
                missing[site] = away.get(site, "no reply") if reply is None else _error(reply)
                continue
            coord.receive_validation(rnd, site, str(reply.content["validation"]["text"]))
            validated.append(site)
        coord.close_validation(rnd, validated, missing)
        log.info("round %d closed: validated by %s%s", rnd, ", ".join(validated) or "nobody",
                 f"; missing {missing}" if missing else "")
    return coord.select()


def _delivered(coord: CoordinatorRole, rnd: int) -> set[str]:
    """The sites that hold round ``rnd``'s local state: they replied to its training, even with a failure (under
    secure aggregation: they took part in it)."""
    glob = json.loads(coord.path(global_model(rnd)).with_suffix(".json").read_text())
    out = {e["site"] for e in glob.get("sites", [])}
    for site in coord.sites:
        side = coord.path(received_dir(rnd, site)) / "update.json"
        if side.is_file() and json.loads(side.read_text()).get("attempts") != 0:
            out.add(site)
    return out


def _messages(roster: Roster, content: RecordDict, kind: str, rnd: int, deadlines: Deadlines,
              only: Iterable[str] | None = None) -> dict[str, Message]:
    """``content`` for every site of the roster (or those in ``only``), by site."""
    keep = set(only) if only is not None else None
    return {site: Message(content, dst_node_id=node, message_type=kind, ttl=deadlines.timeout, group_id=str(rnd))
            for site, node in roster.nodes.items() if keep is None or site in keep}


server = ServerApp()


@server.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    workdir = Path(str(cfg["workdir"]))
    outcome: dict[str, Any] = {"status": "failed"}
    try:
        coord = CoordinatorRole.open(workdir, str(cfg.get("config", "config/config.yaml")))
        deadlines = Deadlines(float(cfg["round-deadline"]), float(cfg["round-timeout"]), float(cfg["join-timeout"]))
        secure = bool(cfg.get("secure-aggregation", False))
        if secure:
            check_config(coord.config)
        final = run_federation(grid, coord, deadlines, secure=context if secure else None)
        outcome = {"status": "finished", "round": final["round"], "final": "results/federated/final.json"}
    except FedgliomaError as exc:
        outcome["error"] = str(exc)
        log.error("%s", exc)
        raise
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
        outcome["traceback"] = traceback.format_exc()
        raise
    finally:
        write_json(workdir / OUTCOME, outcome)
