"""Tools of ``fedglioma federation`` (the cross-institution mode, docs/federation.md): ``pki``, the consortium's
certificates and SuperNode keys (:func:`fedglioma.federation.pki.make_pki`)."""

from __future__ import annotations

import argparse
import os

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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pki`` to the ``federation`` stage."""
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
