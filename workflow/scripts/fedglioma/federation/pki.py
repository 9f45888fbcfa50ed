"""The certificates and keys of a consortium for the cross-institution mode (Flower 1.42; docs/federation.md).

:func:`make_pki` (also ``fedglioma federation pki``) writes one folder per recipient under ``out``::

    ca/ca.crt, ca/ca.key            the consortium's private CA (ca.key only when made here: it stays with
                                    whoever runs this command, offline; a given CA's key is never copied)
    coordinator/server.pem, server.key, ca.crt
                                    the SuperLink's TLS certificate (SubjectAlternativeName: the server names)
                                    and key (``--ssl-certfile``, ``--ssl-keyfile``, ``--ssl-ca-certfile``)
    coordinator/supernodes/<SITE>.pub
                                    every training site's public key, for ``flwr supernode register``
    sites/<SITE>/supernode.key, supernode.pub, ca.crt
                                    one per training site of sites.tsv: the SuperNode's authentication key pair
                                    (EC P-384, private key in OpenSSH format for ``--auth-supernode-private-key``,
                                    one-line OpenSSH public key) and the CA certificate (``--root-certificates``)
    manifest.json                   sites, key fingerprints (as ``ssh-keygen -lf`` prints them), certificate
                                    serials, fingerprints and expiry, the server names

The external site and ``predict`` sites never join the federation and get no key. Flower's SuperNode
authentication does not use TLS client certificates: TLS authenticates the coordinator to the sites (with the CA
certificate), the SuperNode keys authenticate each site to the coordinator.

The set is written whole or not at all: everything is checked first (options, sites.tsv, a given CA), then the
set is made in a temporary sibling folder of ``out`` (mode 0700) and renamed onto ``out``. Private keys are
created with mode 0600 and folders with 0700. An existing set is never overwritten unless ``force`` is given (and
``force`` replaces only a folder that holds a set made here, never another folder).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedglioma import __version__
from fedglioma.atomic import remove_stale, write_json
from fedglioma.config import load_sites
from fedglioma.errors import ConfigError, InputError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes

log = logging.getLogger(__name__)

#: Validity of a CA and server certificate made here, in days (about three years).
DEFAULT_DAYS = 1095
#: Certificates start this long before "now", so that a site whose clock is a little behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=10)
#: The curve of every key made here (the CA's, the server's, the SuperNodes'); Flower 1.42 accepts NIST curves.
CURVE = ec.SECP384R1
#: Environment variable holding the passphrase of a given CA key, or the one a new CA key is encrypted with.
PASSWORD_ENV = "FEDGLIOMA_CA_KEY_PASSWORD"
#: Name of the manifest in ``out``; its presence marks a folder as a set made here (what ``force`` may replace).
MANIFEST = "manifest.json"

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA that signs the coordinator's certificate: made here, or given (its key only when it must sign)."""

    certificate: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes | None
    #: ``"made"`` or the path of the given certificate
    source: str


# ---- names, fingerprints ---------------------------------------------------------------------------------------
def server_names(names: Sequence[str]) -> list[x509.GeneralName]:
    """The SubjectAlternativeName entries of ``names``: an IP address (v4 or v6) or a DNS name each, in order,
    without repeats.

    >>> [type(n).__name__ for n in server_names(["localhost", "127.0.0.1", "localhost"])]
    ['DNSName', 'IPAddress']
    """
    out: list[x509.GeneralName] = []
    for name in names:
        text = name.strip()
        entry: x509.GeneralName
        try:
            entry = x509.IPAddress(ipaddress.ip_address(text))
        except ValueError:
            labels = text.split(".")
            if not text or len(text) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
                raise ConfigError(
                    f"--server-name {name!r} is neither an IP address nor a DNS name. Fix: give the name or address "
                    "the sites will connect to, e.g. --server-name fl.hospital.example --server-name 10.0.0.5 "
                    "(for a pilot on one machine: localhost and 127.0.0.1)") from None
            entry = x509.DNSName(text.lower())
        if entry not in out:
            out.append(entry)
    return out


def ssh_fingerprint(public_key: bytes) -> str:
    """The SHA256 fingerprint of a one-line OpenSSH public key, as ``ssh-keygen -lf`` prints it
    (``SHA256:`` and the unpadded base64 of the SHA-256 of the key blob)."""
    blob = base64.b64decode(public_key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of a certificate as ``openssl x509 -noout -fingerprint -sha256`` prints it."""
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _describe(cert: x509.Certificate) -> dict[str, Any]:
    return {"subject": cert.subject.rfc4514_string(), "serial": f"{cert.serial_number:X}",
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": certificate_fingerprint(cert)}


# ---- the CA ----------------------------------------------------------------------------------------------------
def _signing_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.HashAlgorithm | None:
    """The hash a key signs certificates with: SHA-384 for EC keys of 384 bits or more, none for Ed25519/Ed448
    (their signature has its own), SHA-256 otherwise."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def new_ca(*, days: int, now: dt.datetime) -> CertificateAuthority:
    """A new private CA: EC P-384 key, self-signed, CA with path length 0 (it signs only end certificates),
    key usage certificate and CRL signing, valid ``days`` days."""
    key = ec.generate_private_key(CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedglioma federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"fedglioma federation CA {now:%Y-%m-%d}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _signing_hash(key))
    )
    return CertificateAuthority(cert, key, "made")


def load_ca(cert_path: str | Path, key_path: str | Path | None, *, password: bytes | None = None,
            now: dt.datetime | None = None) -> CertificateAuthority:
    """An existing CA (the hospital's or the consortium's): its certificate (PEM or DER) and, to sign a server
    certificate, its private key (PEM, DER or OpenSSH; ``password`` if encrypted). Checked: a CA certificate,
    valid now, allowed to sign certificates, and the key is the certificate's."""
    now = now or dt.datetime.now(dt.UTC)
    cert_path = Path(cert_path)
    data = _read(cert_path, "CA certificate", "--ca-cert")
    try:
        cert = (x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data
                else x509.load_der_x509_certificate(data))
    except ValueError as exc:
        raise InputError(f"not an X.509 certificate ({exc})", file=cert_path,
                         fix="give the CA's certificate in PEM or DER (--ca-cert)") from exc
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InputError("not a CA certificate (no BasicConstraints CA:TRUE)", file=cert_path,
                         fix="give the certificate of the CA itself, not one it issued (--ca-cert)")
    if cert.issuer != cert.subject:
        raise InputError(f"an intermediate CA (issued by {cert.issuer.rfc4514_string()}): the sites trust ca.crt "
                         "alone and would need the chain up to the root", file=cert_path,
                         fix="give the root CA's certificate and key, or have the coordinator's certificate issued "
                             "and give the root with --ca-cert and --no-server-cert")
    try:
        if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            raise InputError("the CA certificate may not sign certificates (KeyUsage without keyCertSign)",
                             file=cert_path, fix="use a CA whose certificate allows certificate signing")
    except x509.ExtensionNotFound:
        log.warning("%s has no KeyUsage extension: strict TLS clients refuse such a CA (RFC 5280 requires it)",
                    cert_path)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise InputError(f"the CA certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                         f"{cert.not_valid_after_utc:%Y-%m-%d})", file=cert_path,
                         fix="renew the CA, or make a new one (leave out --ca-cert)")
    if key_path is None:
        return CertificateAuthority(cert, None, str(cert_path))
    key_path = Path(key_path)
    key_data = _read(key_path, "CA key", "--ca-key")
    key = _load_private_key(key_data, key_path, password)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
                      | ed448.Ed448PrivateKey):
        raise InputError(f"a {type(key).__name__} cannot sign certificates", file=key_path,
                         fix="give the CA's EC, RSA or Ed25519 key (--ca-key)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise InputError(f"the key is not the key of the CA certificate {cert_path}", file=key_path,
                         fix="give the key that belongs to --ca-cert")
    return CertificateAuthority(cert, key, str(cert_path))


def _read(path: Path, what: str, option: str) -> bytes:
    if not path.is_file():
        raise InputError(f"{what} not found", file=path, fix=f"check the path given to {option}")
    return path.read_bytes()


def _load_private_key(data: bytes, path: Path, password: bytes | None) -> Any:
    if b"OPENSSH PRIVATE KEY" in data:
        load: Any = serialization.load_ssh_private_key
    else:
        load = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        return load(data, password)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        fix = (f"set the passphrase in the environment variable {PASSWORD_ENV}" if password is None
               else f"unset {PASSWORD_ENV}: the key is not encrypted")
        raise InputError(f"cannot read the CA key ({exc})", file=path, fix=fix) from exc
    except ValueError as exc:  # not a key, or a wrong passphrase
        raise InputError(f"cannot read the CA key ({exc})", file=path,
                         fix=f"give the CA's private key (--ca-key) and, if encrypted, its passphrase in {PASSWORD_ENV}"
                         ) from exc


# ---- what the CA signs, the SuperNode keys ----------------------------------------------------------------------
def server_certificate(ca: CertificateAuthority, names: Sequence[str], *, days: int,
                       now: dt.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The coordinator's TLS server certificate and its new EC P-384 key, signed by ``ca``: SubjectAlternativeName
    ``names`` (DNS names and IP addresses; the first is also the common name), extended key usage serverAuth,
    valid ``days`` days but never beyond the CA."""
    if ca.key is None:
        raise ConfigError("no CA key to sign the server certificate")
    alt = server_names(names)
    key = ec.generate_private_key(CURVE())
    not_after = min(now + dt.timedelta(days=days), ca.certificate.not_valid_after_utc)
    if not_after < now + dt.timedelta(days=days):
        log.warning("the server certificate ends with the CA on %s (not %d days from now)", f"{not_after:%Y-%m-%d}",
                    days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0].strip())]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()),
                       critical=False)
        .sign(ca.key, _signing_hash(ca.key))
    )
    return cert, key


def supernode_key_pair(site: str) -> tuple[bytes, bytes]:
    """A SuperNode authentication key pair as Flower 1.42 reads it: a new EC P-384 key in OpenSSH private format
    (unencrypted: the SuperNode reads it without a passphrase) and the one-line OpenSSH public key, commented
    ``fedglioma:<site>``."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" fedglioma:{site}\n".encode()


# ---- writing ---------------------------------------------------------------------------------------------------
def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pkcs8(key: Any, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _write_new(path: Path, data: bytes, *, private: bool = False) -> None:
    """Create ``path`` (never over an existing file) with mode 0600 for a private key, 0644 otherwise (less what
    the umask removes), and write ``data``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _mkdir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    return path


def planned_files(site_ids: Sequence[str], *, made_ca: bool, with_server: bool) -> list[str]:
    """The files of a set, relative to ``out`` (in the order they are listed to the user)."""
    files = ["ca/ca.crt", *(["ca/ca.key"] if made_ca else []), "coordinator/ca.crt",
             *(["coordinator/server.pem", "coordinator/server.key"] if with_server else [])]
    for site in site_ids:
        files += [f"coordinator/supernodes/{site}.pub", f"sites/{site}/ca.crt", f"sites/{site}/supernode.key",
                  f"sites/{site}/supernode.pub"]
    return [*files, MANIFEST]


def _check_out(out: Path, planned: Sequence[str], *, force: bool,
               inside: Sequence[tuple[str, Path]] = ()) -> None:
    """Refuse an ``out`` that holds anything, unless ``force`` and it holds a set made here (its manifest); and
    refuse to replace a folder that holds a given CA file (``inside``: option, path)."""
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", file=out, fix="choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    existing = sorted((out / f for f in planned if (out / f).exists()), key=lambda p: p.suffix != ".key")
    if not force:
        if existing:
            others = f" and {len(existing) - 1} other file(s) of its set" if len(existing) > 1 else ""
            raise InputError(f"would overwrite this existing key or certificate{others}", file=existing[0],
                             fix="keep that set and write the new one to another --out, or give --force to "
                                 f"replace the whole set in {out} (then hand out every folder again and register "
                                 "the new SuperNode keys)")
        raise InputError("the output folder is not empty", file=out, fix="choose a new or empty folder as --out")
    if not (out / MANIFEST).is_file():
        raise InputError(f"--force replaces only a key and certificate set made by this command; {out} has no "
                         f"{MANIFEST}", file=out, fix="choose a new or empty folder as --out")
    root = out.resolve()
    for option, path in inside:
        if path.resolve().is_relative_to(root):
            raise InputError(f"{option} lies inside {out}, which --force would replace", file=path,
                             fix=f"move the CA's files out of {out} first, or write the new set to another --out")


def _publish(tmp: Path, out: Path, *, replace: bool) -> None:
    """Rename the finished set ``tmp`` onto ``out`` (absent or an empty folder; with ``replace`` also a set)."""
    if replace and out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # a stale temporary if killed here
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


# ---- the command ------------------------------------------------------------------------------------------------
def make_pki(
    sites: str | Path,
    out: str | Path,
    *,
    server_name: Sequence[str] = (),
    ca_cert: str | Path | None = None,
    ca_key: str | Path | None = None,
    ca_key_password: bytes | None = None,
    server_cert: bool = True,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> dict[str, Any]:
    """Make the certificates and keys of a consortium under ``out`` (the layout: module docstring); returns the
    manifest it writes to ``out/manifest.json``.

    ``sites``: sites.tsv (validated by :func:`fedglioma.config.load_sites`); each ``train`` site gets a SuperNode
    key pair, the others none. ``server_name``: the DNS names and IP addresses the sites reach the coordinator at.
    ``ca_cert``/``ca_key``: use this CA instead of making one (the key only to sign the server certificate;
    ``ca_key_password`` if it is encrypted; for a new CA, its key is encrypted with it when given).
    ``server_cert=False``: the coordinator already has a certificate from ``ca_cert``; none is made.
    ``days``: validity of a new CA and of the server certificate (which never outlives its CA). ``force``: replace
    an existing set in ``out``.
    """
    out = Path(out)
    if days < 1:
        raise ConfigError(f"--days {days}: must be at least 1. Fix: give the validity in days, e.g. --days 365")
    if ca_key is not None and ca_cert is None:
        raise ConfigError("--ca-key without --ca-cert. Fix: give the CA's certificate with --ca-cert as well")
    if ca_cert is None and not server_cert:
        raise ConfigError("--no-server-cert with a new CA: the new CA would sign nothing the coordinator uses. Fix: "
                          "give --ca-cert of the CA that signed the coordinator's certificate, or leave out "
                          "--no-server-cert")
    if server_cert and ca_cert is not None and ca_key is None:
        raise ConfigError("--ca-cert without --ca-key cannot sign the coordinator's server certificate. Fix: give "
                          "--ca-key as well, or --no-server-cert if the coordinator already has a certificate from "
                          "this CA")
    if server_cert and not server_name:
        raise ConfigError("no --server-name for the coordinator's certificate. Fix: give every DNS name and IP "
                          "address the sites connect to, e.g. --server-name fl.hospital.example (a pilot on one "
                          "machine: --server-name localhost --server-name 127.0.0.1)")
    names = [str(n).strip() for n in server_name]
    san = server_names(names)  # a bad name is refused before anything is made

    rows = load_sites(sites)
    training = [r.site for r in rows if r.role == "train"]
    if not training:
        raise InputError("no training site: nobody would join the federation", file=sites,
                         fix="set role=train on the sites that train")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)  # certificates hold whole seconds
    ca = (new_ca(days=days, now=now) if ca_cert is None
          else load_ca(ca_cert, ca_key if server_cert else None, password=ca_key_password, now=now))
    planned = planned_files(training, made_ca=ca_cert is None, with_server=server_cert)
    given = [(opt, Path(p)) for opt, p in (("--ca-cert", ca_cert), ("--ca-key", ca_key)) if p is not None]
    _check_out(out, planned, force=force, inside=given)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # temporaries of a killed run
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # 0700
    try:
        ca_pem = _pem(ca.certificate)
        _write_new(_mkdir(tmp / "ca") / "ca.crt", ca_pem)
        if ca_cert is None:
            _write_new(tmp / "ca" / "ca.key", _pkcs8(ca.key, ca_key_password), private=True)
        coordinator = _mkdir(tmp / "coordinator")
        _write_new(coordinator / "ca.crt", ca_pem)
        server: dict[str, Any] | None = None
        if server_cert:
            cert, key = server_certificate(ca, names, days=days, now=now)
            _write_new(coordinator / "server.pem", _pem(cert))
            _write_new(coordinator / "server.key", _pkcs8(key), private=True)
            server = {"certificate": "coordinator/server.pem", "key": "coordinator/server.key",
                      "names": [str(n.value) for n in san], **_describe(cert)}
        public_keys = _mkdir(coordinator / "supernodes")
        site_folders = _mkdir(tmp / "sites")
        site_entries: dict[str, Any] = {}
        for site in training:
            private, public = supernode_key_pair(site)
            folder = _mkdir(site_folders / site)
            _write_new(folder / "supernode.key", private, private=True)
            _write_new(folder / "supernode.pub", public)
            _write_new(folder / "ca.crt", ca_pem)
            _write_new(public_keys / f"{site}.pub", public)
            site_entries[site] = {"folder": f"sites/{site}", "public_key": f"sites/{site}/supernode.pub",
                                  "fingerprint": ssh_fingerprint(public), "key_type": "ECDSA P-384"}
        manifest = {
            "created": now.isoformat(timespec="seconds"),
            "fedglioma": __version__,
            "sites_table": str(sites),
            "ca": {"certificate": "ca/ca.crt", "key": "ca/ca.key" if ca_cert is None else None,
                   "source": ca.source, **_describe(ca.certificate)},
            "server": server,
            "sites": site_entries,
            "without_key": {r.site: r.role for r in rows if r.role != "train"},
        }
        write_json(tmp / MANIFEST, manifest)
        _publish(tmp, out, replace=force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("keys and certificates for %d site(s) in %s", len(training), out)
    return manifest
