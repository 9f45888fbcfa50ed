"""Tools of ``fedglioma federation`` (the cross-institution mode, docs/federation.md): ``pki``, the consortium's
certificates and SuperNode keys (:func:`fedglioma.federation.pki.make_pki`); ``superlink``, ``register`` and
``run`` of the coordinator; ``supernode`` of a site. The roles' commands start Flower's own daemons with the
consortium's files and fedglioma's apps (:mod:`fedglioma.federation.apps`)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from fedglioma.errors import ConfigError, InputError
from fedglioma.settings import add_config_arguments, config_of


def _pki(args: argparse.Namespace) -> int:
    from fedglioma.federation.pki import DEFAULT_DAYS, PASSWORD_ENV, make_pki

    password = os.environ.get(PASSWORD_ENV)
    manifest = make_pki(
        args.sites or config_of(args)["sites"],
        args.out,
        server_name=args.server_name or (),
        ca_cert=args.ca_cert,
        ca_key=args.ca_key,
        ca_key_password=password.encode() if password else None,
        server_cert=args.server_cert,
        days=DEFAULT_DAYS if args.days is None else args.days,
        force=args.force,
    )
    ca, server = manifest["ca"], manifest["server"]
    out = args.out.rstrip("/")
    rows = [(f"{out}/ca/", "CA certificate" + (" and key (keep the key offline, with you)" if ca["key"]
                                                else f" (given: {ca['source']})") + f", valid until {ca['not_after']}"),
            (f"{out}/coordinator/", "to the coordinator: "
             + (f"server certificate for {', '.join(server['names'])} and key (until {server['not_after']}), "
                if server else "") + "CA certificate, the sites' public keys (supernodes/)")]
    rows += [(f"{out}/{entry['folder']}/", f"to site {site} only: SuperNode key {entry['fingerprint']}")
             for site, entry in manifest["sites"].items()]
    width = max(len(folder) for folder, _ in rows)
    for folder, what in rows:
        print(f"{folder:<{width}}  {what}")
    for site, role in manifest["without_key"].items():
        print(f"(site {site}, role {role}: no key, it does not join the federation)")
    return 0


def _flower(name: str) -> str:
    """A Flower executable of this environment (the one installed beside fedglioma)."""
    exe = Path(sys.executable).parent / name
    if not exe.is_file():
        raise ConfigError(f"{exe} not found: Flower is not installed here. Fix: pip install 'fedglioma[federation]'")
    return str(exe)


def _env() -> dict[str, str]:
    """Flower's daemons start their helpers (flower-superexec, flwr-clientapp) by name: this environment first."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _need(folder: Path, *names: str, what: str) -> list[str]:
    paths = [folder / n for n in names]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{what} file {p.name} missing", file=p,
                             fix="give the folder `fedglioma federation pki` made for this role (docs/federation.md)")
    return [str(p.resolve()) for p in paths]


def superlink_command(args: argparse.Namespace) -> list[str]:
    """``flower-superlink`` with TLS from the coordinator's folder and SuperNode authentication on."""
    cert, key, ca = _need(Path(args.pki), "server.pem", "server.key", "ca.crt", what="the coordinator's TLS")
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    return [_flower("flower-superlink"), "--ssl-certfile", cert, "--ssl-keyfile", key, "--ssl-ca-certfile", ca,
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str((state / "superlink.db").resolve()), "--host", args.host, "--port", str(args.port)]


def _superlink(args: argparse.Namespace) -> int:
    cmd = superlink_command(args)
    os.execve(cmd[0], cmd, _env())


def supernode_command(args: argparse.Namespace) -> list[str]:
    """``flower-supernode`` of one site: TLS against the consortium's CA, the site's authentication key, and the
    node config the ClientApp reads (site, working directory, config, threads). Checks the site first."""
    from fedglioma.federation.roles import SiteRole

    role = SiteRole.open(args.site, args.workdir, args.config, threads=args.threads)
    key, ca = _need(Path(args.pki), "supernode.key", "ca.crt", what=f"site {args.site}'s")
    node_config = " ".join(f"{k}={json.dumps(v)}" for k, v in
                           {"site": role.site, "workdir": str(role.workdir), "config": args.config,
                            "threads": role.threads}.items())
    return [_flower("flower-supernode"), "--superlink", args.superlink, "--root-certificates", ca,
            "--auth-supernode-private-key", key, "--node-config", node_config, "--host", "127.0.0.1",
            "--port", str(args.port)]


#: what flower-supernode prints when the SuperLink refused it or could not be reached (Flower 1.42's exit code 305;
#: the process itself exits with status 1, as for any other error)
SUPERNODE_CONNECTION_ERROR = "Exit Code: 305"
#: seconds between two attempts of a SuperNode to join
RETRY_S = 15.0


def _supernode(args: argparse.Namespace) -> int:
    """Run flower-supernode until it ends; retry one that could not join for ``--retry-for`` seconds. A SuperNode
    restarted within a minute of its previous run (killed, crashed) is refused until the SuperLink counts the
    previous run as gone (two missed 30 s heartbeats); retrying makes "restart it to rejoin" work."""
    import signal

    cmd = supernode_command(args)
    end = time.monotonic() + args.retry_for
    while True:
        child = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame, c=child: c.send_signal(signum))
        refused = threading.Event()
        threading.Thread(target=_relay, args=(child.stdout, refused), daemon=True).start()
        rc = child.wait()
        time.sleep(0.5)  # the last lines
        if rc == 0 or not refused.is_set() or time.monotonic() + RETRY_S > end:
            if refused.is_set():
                print(f"site {args.site}: the SuperLink refused this SuperNode (Flower exit code 305) or was unreachable for "
                      f"{args.retry_for:.0f} s. Fix: check --superlink, that the site's key is registered "
                      "(`fedglioma federation register`) and that ca.crt is the consortium's", file=sys.stderr)
            return rc
        print(f"site {args.site}: could not join (Flower exit code 305); retrying in {RETRY_S:.0f} s",
              file=sys.stderr, flush=True)
        time.sleep(RETRY_S)


def _relay(stream: Iterable[str], refused: threading.Event) -> None:
    """Pass Flower's log on, noting a refusal (a thread: the SuperNode's SuperExec may keep the pipe open after the
    SuperNode ended)."""
    for line in stream:
        sys.stdout.write(line)
        sys.stdout.flush()
        if SUPERNODE_CONNECTION_ERROR in line:
            refused.set()


def _connection(args: argparse.Namespace, ca: str) -> str:
    """Write the Flower CLI's connection ``args.connection`` to the SuperLink (``$FLWR_HOME/config.toml``)."""
    from flwr.cli.flower_config import write_superlink_connection
    from flwr.cli.typing import SuperLinkConnection

    write_superlink_connection(SuperLinkConnection(name=args.connection, address=args.superlink,
                                                   root_certificates=ca))
    return args.connection


def _register(args: argparse.Namespace) -> int:
    (ca,) = _need(Path(args.pki), "ca.crt", what="the coordinator's")
    keys = sorted((Path(args.pki) / "supernodes").glob("*.pub"))
    if not keys:
        raise InputError("no site key (supernodes/<SITE>.pub)", file=Path(args.pki) / "supernodes",
                         fix="give the coordinator's folder of `fedglioma federation pki`")
    conn = _connection(args, ca)
    for pub in keys:
        out = subprocess.run([_flower("flwr"), "supernode", "register", str(pub), conn, "--name", pub.stem,
                              "--format", "json"], capture_output=True, text=True, env=_env(), check=False)
        try:
            doc = json.loads(out.stdout)
        except ValueError:
            doc = {"success": False, "error-message": (out.stdout + out.stderr).strip()}
        if doc.get("success"):
            print(f"site {pub.stem}: registered, SuperNode {doc.get('node-id')}")
        elif "already" in json.dumps(doc).lower():
            print(f"site {pub.stem}: already registered")
        else:
            raise ConfigError(f"site {pub.stem}: registering {pub} failed: {doc.get('error-message', doc)}")
    return 0


def run_config(args: argparse.Namespace) -> str:
    """The ServerApp's run config (``flwr run --run-config``)."""
    values = {"workdir": str(Path(args.workdir).resolve()), "config": args.config,
              "round-deadline": float(args.round_deadline), "round-timeout": float(args.round_timeout),
              "join-timeout": float(args.join_timeout), "secure-aggregation": bool(args.secure_aggregation)}
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def _run(args: argparse.Namespace) -> int:
    from fedglioma.federation.apps import OUTCOME
    from fedglioma.federation.roles import CoordinatorRole

    coord = CoordinatorRole.open(args.workdir, args.config)
    if args.secure_aggregation:
        from fedglioma.federation.secure import check_config

        check_config(coord.config)
    outcome = coord.path(OUTCOME)
    outcome.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="fedglioma-flower-") as tmp:
        app = Path(tmp) / "app"
        shutil.copytree(Path(__file__).parent / "flower_app", app, ignore=shutil.ignore_patterns("__pycache__"))
        cmd = [_flower("flwr"), "run", str(app), args.connection, "--run-config", run_config(args), "--stream"]
        subprocess.run(cmd, env=_env(), check=False)
    deadline = time.monotonic() + 60
    while not outcome.is_file() and time.monotonic() < deadline:  # the stream may end before the file is written
        time.sleep(1)
    if not outcome.is_file():
        raise ConfigError(f"the federation ended without {outcome}: see the SuperLink's log")
    doc = json.loads(outcome.read_text())
    if doc.get("status") != "finished":
        print(f"federation failed: {doc.get('error')}", file=sys.stderr)
        return 1
    print(f"federation finished: final model of round {doc['round']} ({coord.path(doc['final'])})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pki``, ``superlink``, ``register``, ``run`` and ``supernode`` to the ``federation`` stage."""
    p = subparsers.add_parser(
        "pki",
        help="a consortium's TLS certificates and SuperNode keys, one folder per recipient",
        description="Make a private CA (or use the hospital's: --ca-cert/--ca-key), the coordinator's TLS server "
        "certificate for --server-name, and a SuperNode authentication key pair for every training site of "
        "sites.tsv, under --out: ca/ (stays with you), coordinator/, sites/<SITE>/ (one per site), manifest.json. "
        "Never overwrites a set (--force replaces it whole). The passphrase of an encrypted --ca-key (or to "
        "encrypt a new CA key with) is read from the environment variable FEDGLIOMA_CA_KEY_PASSWORD. "
        "docs/federation.md, 'Certificates and keys'.",
    )
    p.add_argument("--sites", default=None, help="sites table (default: the config's `sites`)")
    p.add_argument("--out", required=True, help="new folder for the set, e.g. pki")
    p.add_argument("--server-name", action="append", metavar="NAME",
                   help="DNS name or IP address the sites reach the coordinator at (repeatable; a pilot on one "
                        "machine: --server-name localhost --server-name 127.0.0.1)")
    p.add_argument("--ca-cert", default=None, help="use this CA certificate (PEM or DER) instead of making a CA")
    p.add_argument("--ca-key", default=None, help="the key of --ca-cert, to sign the coordinator's certificate")
    p.add_argument("--no-server-cert", dest="server_cert", action="store_false",
                   help="make no server certificate: the coordinator already has one from --ca-cert")
    p.add_argument("--days", type=int, default=None,
                   help="validity of a new CA and of the server certificate in days (default: 1095; the server "
                        "certificate never outlives its CA)")
    p.add_argument("--force", action="store_true", help="replace the set already in --out (every folder must "
                                                        "then be handed out again and the keys registered again)")
    add_config_arguments(p)  # only for the default of --sites
    p.set_defaults(func=_pki)

    p = subparsers.add_parser(
        "superlink", help="the coordinator's Flower SuperLink (TLS, only registered SuperNodes join)",
        description="Start flower-superlink with the coordinator's folder of `fedglioma federation pki` (TLS "
        "certificate, key, CA) and SuperNode authentication on; its state (registered SuperNodes, runs) in "
        "--state/superlink.db survives a restart. Runs until stopped. docs/federation.md.")
    p.add_argument("--pki", required=True, help="the coordinator's folder, e.g. pki/coordinator")
    p.add_argument("--state", default="flower", help="folder of the SuperLink's database (default: flower)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all; 127.0.0.1 for a pilot)")
    p.add_argument("--port", type=int, default=9093, help="port of the SuperLink's HTTPS API (default: 9093)")
    p.set_defaults(func=_superlink)

    p = subparsers.add_parser(
        "register", help="register every training site's SuperNode key with the SuperLink",
        description="Write the Flower CLI's connection --connection to --superlink (TLS against the consortium's "
        "CA) in $FLWR_HOME/config.toml (default ~/.flwr), then `flwr supernode register` each site's public key "
        "of the coordinator's folder (supernodes/<SITE>.pub, named after the site).")
    p.add_argument("--pki", required=True, help="the coordinator's folder, e.g. pki/coordinator")
    p.add_argument("--superlink", required=True, help="the SuperLink as host:port, e.g. fl.hospital-a.example:9093")
    p.add_argument("--connection", default="fedglioma", help="name of the Flower CLI connection (default: fedglioma)")
    p.set_defaults(func=_register)

    p = subparsers.add_parser(
        "run", help="run the federation: fedglioma's ServerApp on the SuperLink, until the final model",
        description="Submit fedglioma's Flower App (`flwr run`) through --connection; the ServerApp aggregates in "
        "--workdir (results/federated/, as the workflow's rules) with the config's strategy and selects the final "
        "model. A round closes when every site replied, or after --round-deadline seconds with federated.min_sites "
        "updates, or at --round-timeout; a missing site is recorded in the round's sidecar and asked again next "
        "round. Rerun after a coordinator restart: finished rounds are kept.")
    p.add_argument("--workdir", default=".", help="the coordinator's working directory (default: .)")
    p.add_argument("--connection", default="fedglioma", help="the Flower CLI connection `register` wrote")
    p.add_argument("--round-deadline", type=float, default=3600.0,
                   help="seconds after which a round closes once the quorum delivered (default: 3600)")
    p.add_argument("--round-timeout", type=float, default=21600.0,
                   help="seconds after which a round closes with what arrived (default: 21600)")
    p.add_argument("--join-timeout", type=float, default=600.0,
                   help="seconds the first round waits for every site's SuperNode (default: 600)")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="train every round under Flower's SecAgg+: the coordinator sees only the weighted sum of the "
                        "sites' parameters (strategy fedavg or fedprox, no update_norm_bound or update_min_cosine; "
                        "at least 2 sites)")
    p.add_argument("--config", default="config/config.yaml", help="config, relative to --workdir")
    p.set_defaults(func=_run)

    p = subparsers.add_parser(
        "supernode", help="a site's Flower SuperNode: trains and validates the site's rounds on its training set",
        description="Check the site's working directory (its config and sites.tsv, and the training set its own "
        "`snakemake` made), then start flower-supernode against --superlink with TLS (the site's ca.crt) and its "
        "authentication key. Runs until stopped; restart it to rejoin. docs/federation.md.")
    p.add_argument("--site", required=True, help="this site's ID in sites.tsv (role train)")
    p.add_argument("--pki", required=True, help="the site's folder, e.g. pki/sites/SiteA")
    p.add_argument("--superlink", required=True, help="the SuperLink as host:port")
    p.add_argument("--workdir", default=".", help="the site's working directory (default: .)")
    p.add_argument("--config", default="config/config.yaml", help="config, relative to --workdir")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of training and validation (default: 2, as "
                                                         "the rules; the same on every site for identical bytes)")
    p.add_argument("--port", type=int, default=9094, help="local port of the SuperNode's own API (default: 9094)")
    p.add_argument("--retry-for", type=float, default=300.0,
                   help="seconds to keep retrying a refused or failed connection (default: 300; a SuperNode "
                        "restarted within a minute of its last run is refused until the SuperLink lets that go)")
    p.set_defaults(func=_supernode)
