"""``fedglioma federation pki`` (:mod:`fedglioma.federation.pki`): the consortium's CA, the coordinator's TLS
certificate and the SuperNode keys, checked as TLS (Python's ``ssl``, which Flower 1.42's SuperLink (uvicorn) and
its clients (httpx) use) and as Flower reads them (its own loaders, when ``flwr`` is installed)."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError  # noqa: E402

from fedglioma.cli import main  # noqa: E402
from fedglioma.errors import ConfigError, InputError  # noqa: E402
from fedglioma.federation import pki  # noqa: E402
from fedglioma.federation.pki import make_pki, ssh_fingerprint  # noqa: E402
from tests.conftest import write_sites_tsv  # noqa: E402

NAMES = ["localhost", "127.0.0.1"]
TRAINING = ["A", "B"]


def sites_tsv(path: Path, rows: list[tuple[str, str]] | None = None) -> Path:
    rows = rows or [("A", "train"), ("B", "train"), ("X", "external"), ("P", "predict")]
    return write_sites_tsv(path, [{"site": s, "role": r, "layout": "brats2021", "path": s} for s, r in rows])


@pytest.fixture
def made(tmp_path: Path) -> tuple[Path, dict]:
    out = tmp_path / "pki"
    return out, make_pki(sites_tsv(tmp_path / "sites.tsv"), out, server_name=NAMES)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> str:
    """A TLS handshake in memory (no socket): the client checks the server's chain and ``hostname``."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    ends = [client.wrap_bio(c_in, c_out, server_hostname=hostname), server.wrap_bio(s_in, s_out, server_side=True)]
    done = [False, False]
    for _ in range(10):
        for i, end in enumerate(ends):
            if not done[i]:
                try:
                    end.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            return str(ends[0].version())
    raise AssertionError("handshake did not finish")


def own_ca(tmp_path: Path, *, days: int = 30, password: bytes | None = None) -> tuple[Path, Path, x509.Certificate]:
    """A hospital's CA (EC P-256, unlike the CAs made here), its key encrypted with ``password``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Hospital Root CA")])
    now = dt.datetime.now(dt.UTC)
    ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
          .sign(key, hashes.SHA256()))
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    (tmp_path / "hospital").mkdir(parents=True)
    cert_path, key_path = tmp_path / "hospital" / "ca.pem", tmp_path / "hospital" / "ca.key"
    cert_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    return cert_path, key_path, ca


def test_server_certificate_chains_to_the_ca_with_names_and_server_use(made: tuple[Path, dict]) -> None:
    out, manifest = made
    ca, server = cert(out / "ca" / "ca.crt"), cert(out / "coordinator" / "server.pem")
    server.verify_directly_issued_by(ca)  # issuer name and signature
    ca.public_key().verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(server.signature_hash_algorithm))
    basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey) and ca.public_key().curve.name == "secp384r1"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # RFC 5280 path validation with the name the site connects to
    store = Store([ca])
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))):
        PolicyBuilder().store(store).build_server_verifier(name).verify(server, [])
    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("elsewhere.example")).verify(server, [])
    assert (out / "coordinator" / "ca.crt").read_bytes() == (out / "ca" / "ca.crt").read_bytes()
    assert manifest["server"]["names"] == NAMES
    assert manifest["server"]["serial"] == f"{server.serial_number:X}"
    assert manifest["ca"]["not_after"] == ca.not_valid_after_utc.isoformat()
    assert 1090 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 1096


def test_tls_handshake_as_flower_makes_it(made: tuple[Path, dict]) -> None:
    """The SuperLink serves TLS through uvicorn (``load_cert_chain``); Flower's clients verify with
    ``SSLContext(PROTOCOL_TLS_CLIENT)`` and the CA as ``cadata``; here also under strict X.509 checks."""
    out, _ = made
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(out / "coordinator" / "server.pem", out / "coordinator" / "server.key")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cadata=(out / "sites" / "A" / "ca.crt").read_text())
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    for name in NAMES:
        assert handshake(server, client, name).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client, "10.9.9.9")


def test_each_training_site_gets_its_own_key_pair_and_the_others_none(made: tuple[Path, dict]) -> None:
    out, manifest = made
    assert sorted(p.name for p in (out / "sites").iterdir()) == TRAINING
    assert sorted(manifest["sites"]) == TRAINING and manifest["without_key"] == {"X": "external", "P": "predict"}
    seen = set()
    for site in TRAINING:
        folder = out / "sites" / site
        assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "supernode.key", "supernode.pub"]
        private = serialization.load_ssh_private_key(folder.joinpath("supernode.key").read_bytes(), None)
        public_text = folder.joinpath("supernode.pub").read_bytes()
        assert public_text.count(b"\n") == 1 and public_text.startswith(b"ecdsa-sha2-nistp384 ")
        public = serialization.load_ssh_public_key(public_text)
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()
        assert (out / "coordinator" / "supernodes" / f"{site}.pub").read_bytes() == public_text
        assert manifest["sites"][site]["fingerprint"] == ssh_fingerprint(public_text)
        if shutil.which("ssh-keygen"):
            printed = subprocess.run(["ssh-keygen", "-lf", str(folder / "supernode.pub")], capture_output=True,
                                     text=True, check=True).stdout.split()
            assert printed[1] == manifest["sites"][site]["fingerprint"]
        seen.add(public_text)
    assert len(seen) == len(TRAINING)


def test_private_keys_are_0600_and_folders_0700(made: tuple[Path, dict]) -> None:
    out, _ = made
    keys = sorted(out.rglob("*.key"))
    assert [str(k.relative_to(out)) for k in keys] == ["ca/ca.key", "coordinator/server.key",
                                                        "sites/A/supernode.key", "sites/B/supernode.key"]
    assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}
    folders = [out, *(p for p in out.rglob("*") if p.is_dir())]
    assert {stat.S_IMODE(d.stat().st_mode) for d in folders} == {0o700}


def test_flower_reads_the_key_files(made: tuple[Path, dict]) -> None:
    """The functions Flower 1.42 itself reads them with: ``flower-supernode --auth-supernode-private-key`` and
    ``flwr supernode register KEY.pub`` (no Flower process is started)."""
    pytest.importorskip("flwr")
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    out, _ = made
    for site in TRAINING:
        args = argparse.Namespace(auth_supernode_private_key=str(out / "sites" / site / "supernode.key"),
                                  auth_supernode_public_key=None)
        private, public = _try_setup_client_authentication(args)
        registered = try_load_public_key(out / "coordinator" / "supernodes" / f"{site}.pub")
        assert registered == public_key_to_bytes(public)
        assert private.public_key().public_numbers() == public.public_numbers()


def test_an_existing_set_is_never_overwritten(made: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = made
    before = files(out)
    with pytest.raises(InputError, match=r"file .*ca\.key: would overwrite this existing key.* Fix: .*--force"):
        make_pki(tmp_path / "sites.tsv", out, server_name=NAMES)
    assert files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pki", "sites.tsv"]  # no temporary left

    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("mine")
    for force in (False, True):  # --force replaces only a set made here
        with pytest.raises(InputError, match="not empty" if not force else "no manifest.json"):
            make_pki(tmp_path / "sites.tsv", other, server_name=NAMES, force=force)
    assert files(other) == {"readme.txt": b"mine"}

    make_pki(tmp_path / "sites.tsv", out, server_name=NAMES, force=True)
    after = files(out)
    assert sorted(after) == sorted(before) and after["ca/ca.crt"] != before["ca/ca.crt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "pki", "sites.tsv"]


def test_a_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made_keys = []

    def second_fails(site: str) -> tuple[bytes, bytes]:
        if made_keys:
            raise OSError("disk full")
        made_keys.append(site)
        return real(site)

    real = pki.supernode_key_pair
    monkeypatch.setattr(pki, "supernode_key_pair", second_fails)
    with pytest.raises(OSError, match="disk full"):
        make_pki(sites_tsv(tmp_path / "sites.tsv"), tmp_path / "pki", server_name=NAMES)
    assert made_keys == ["A"] and sorted(p.name for p in tmp_path.iterdir()) == ["sites.tsv"]


def test_bring_your_own_ca(tmp_path: Path) -> None:
    tsv = sites_tsv(tmp_path / "sites.tsv")
    ca_cert, ca_key, ca = own_ca(tmp_path, days=30, password=b"secret")
    manifest = make_pki(tsv, tmp_path / "pki", server_name=["fl.hospital.example"], ca_cert=ca_cert, ca_key=ca_key,
                        ca_key_password=b"secret")
    out = tmp_path / "pki"
    server = cert(out / "coordinator" / "server.pem")
    server.verify_directly_issued_by(ca)
    PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName("fl.hospital.example")).verify(server, [])
    assert server.not_valid_after_utc == ca.not_valid_after_utc  # never outlives its CA
    assert (out / "sites" / "A" / "ca.crt").read_bytes() == ca_cert.read_bytes()
    assert not (out / "ca" / "ca.key").exists() and manifest["ca"]["key"] is None
    assert manifest["ca"]["source"] == str(ca_cert)

    # the coordinator already has a certificate from this CA: the CA's certificate is enough
    manifest = make_pki(tsv, tmp_path / "pki2", ca_cert=ca_cert, server_cert=False)
    assert manifest["server"] is None
    assert sorted(p.name for p in (tmp_path / "pki2" / "coordinator").iterdir()) == ["ca.crt", "supernodes"]

    with pytest.raises(InputError, match=r"ca\.key: cannot read the CA key .* Fix: set the passphrase in .*"
                                         "FEDGLIOMA_CA_KEY_PASSWORD"):
        make_pki(tsv, tmp_path / "p3", server_name=NAMES, ca_cert=ca_cert, ca_key=ca_key)
    _, other_key, _ = own_ca(tmp_path / "another")
    with pytest.raises(InputError, match="is not the key of the CA certificate"):
        make_pki(tsv, tmp_path / "p3", server_name=NAMES, ca_cert=ca_cert, ca_key=other_key)
    expired, expired_key, _ = own_ca(tmp_path / "expired", days=0)
    with pytest.raises(InputError, match=r"ca\.pem: the CA certificate is not valid now"):
        make_pki(tsv, tmp_path / "p3", server_name=NAMES, ca_cert=expired, ca_key=expired_key)
    # an intermediate CA: the sites, trusting only ca.crt, would need the chain
    inter_key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    inter = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Inter")]))
             .issuer_name(ca.subject).public_key(inter_key.public_key()).serial_number(1)
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=9))
             .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
             .sign(serialization.load_pem_private_key(ca_key.read_bytes(), b"secret"), hashes.SHA256()))
    (tmp_path / "inter.pem").write_bytes(inter.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InputError, match="inter.pem: an intermediate CA .*Fix: give the root CA"):
        make_pki(tsv, tmp_path / "p3", ca_cert=tmp_path / "inter.pem", server_cert=False)
    with pytest.raises(InputError, match="not a CA certificate"):
        make_pki(tsv, tmp_path / "p3", server_name=NAMES, ca_cert=out / "coordinator" / "server.pem",
                 ca_key=out / "coordinator" / "server.key")
    assert not (tmp_path / "p3").exists()

    # renewing with the CA of a set made here: --force on that same folder would delete the CA's key
    made = tmp_path / "made"
    make_pki(tsv, made, server_name=NAMES)
    before = files(made)
    with pytest.raises(InputError, match="--ca-cert lies inside .*Fix: move the CA's files out"):
        make_pki(tsv, made, server_name=NAMES, ca_cert=made / "ca" / "ca.crt", ca_key=made / "ca" / "ca.key",
                 force=True)
    assert files(made) == before


@pytest.mark.parametrize(("options", "message"), [
    ({"ca_key": "k.pem"}, "--ca-key without --ca-cert"),
    ({"server_cert": False}, "--no-server-cert with a new CA"),
    ({"ca_cert": "c.pem"}, "--ca-cert without --ca-key"),
    ({"server_name": []}, "no --server-name"),
    ({"server_name": ["fl_host"]}, "'fl_host' is neither an IP address nor a DNS name"),
    ({"days": 0}, "--days 0: must be at least 1"),
])
def test_bad_options_are_refused_before_anything_is_made(tmp_path: Path, options: dict, message: str) -> None:
    kwargs = {"server_name": NAMES, **options}
    with pytest.raises(ConfigError, match=message):
        make_pki(sites_tsv(tmp_path / "sites.tsv"), tmp_path / "pki", **kwargs)
    assert not (tmp_path / "pki").exists()


def test_a_bad_sites_table_gets_the_usual_error(tmp_path: Path) -> None:
    bad = sites_tsv(tmp_path / "sites.tsv", [("A", "train"), ("X", "external"), ("Y", "external")])
    with pytest.raises(InputError, match=r"file .*sites\.tsv: 2 external sites \(site X, site Y\).*Fix: "):
        make_pki(bad, tmp_path / "pki", server_name=NAMES)
    with pytest.raises(InputError, match="sites table not found"):
        make_pki(tmp_path / "nope.tsv", tmp_path / "pki", server_name=NAMES)
    predict_only = sites_tsv(tmp_path / "p.tsv", [("P", "predict")])
    with pytest.raises(InputError, match="no training site"):
        make_pki(predict_only, tmp_path / "pki", server_name=NAMES)
    assert not (tmp_path / "pki").exists()


def test_command_makes_what_the_function_makes(made: tuple[Path, dict], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out, manifest = made
    argv = ["federation", "pki", "--sites", str(tmp_path / "sites.tsv"), "--out", str(tmp_path / "cli"),
            *(a for n in NAMES for a in ("--server-name", n))]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "to site A only" in printed and "site X, role external: no key" in printed
    cli = tmp_path / "cli"
    assert sorted(files(cli)) == sorted(files(out))
    made_by_cli = (cli / "manifest.json").read_text()
    other = json.loads(made_by_cli)
    assert other["server"]["names"] == manifest["server"]["names"] and other["without_key"] == manifest["without_key"]
    assert sorted(other["sites"]) == sorted(manifest["sites"])
    assert main(argv) == 1  # refused: the set exists
    assert (cli / "manifest.json").read_text() == made_by_cli


def test_renewing_the_server_certificate_with_the_same_ca(tmp_path: Path) -> None:
    """docs/federation.md, "Expiry and rotation": a new CA key encrypted with the passphrase; the same CA signs a
    new server certificate that the sites' existing ca.crt accepts."""
    tsv = sites_tsv(tmp_path / "sites.tsv")
    first = tmp_path / "pki"
    make_pki(tsv, first, server_name=NAMES, ca_key_password=b"pw")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key((first / "ca" / "ca.key").read_bytes(), None)
    manifest = make_pki(tsv, tmp_path / "pki-2029", server_name=[*NAMES, "fl.example"], days=365,
                        ca_cert=first / "ca" / "ca.crt", ca_key=first / "ca" / "ca.key", ca_key_password=b"pw")
    renewed = cert(tmp_path / "pki-2029" / "coordinator" / "server.pem")
    site_ca = cert(first / "sites" / "A" / "ca.crt")
    PolicyBuilder().store(Store([site_ca])).build_server_verifier(x509.DNSName("fl.example")).verify(renewed, [])
    assert 364 <= (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days <= 366
    assert manifest["ca"]["sha256"] == json.loads((first / "manifest.json").read_text())["ca"]["sha256"]
