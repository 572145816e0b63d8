"""``membershipd cluster certs``: a separate cluster CA and per-node route certificates (point 5)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import stat
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from membership.cli import cli

NODES = ["--node", "n1=127.0.0.1,n1.internal", "--node", "n2=10.0.0.2", "--node", "n3=n3.internal"]


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_certs_make_a_ca_and_node_certificates_with_private_keys(cli, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    p = cli("cluster", "certs", "--out", str(out), *NODES, "--json")
    assert p.returncode == 0, p.stderr
    written = json.loads(p.stdout)
    assert written["ca_created"] is True and set(written["nodes"]) == {"n1", "n2", "n3"}
    assert "PRIVATE KEY" not in p.stdout + p.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for key in ["ca-key.pem", "n1-key.pem", "n2-key.pem", "n3-key.pem"]:
        assert stat.S_IMODE((out / key).stat().st_mode) == 0o600, key
        assert b"PRIVATE KEY" in (out / key).read_bytes()
    ca = load(out / "ca.pem")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    sans = {
        "n1": [ipaddress.ip_address("127.0.0.1"), "n1.internal"],
        "n2": [ipaddress.ip_address("10.0.0.2")],
        "n3": ["n3.internal"],
    }
    for name, expected in sans.items():
        cert = load(out / f"{name}.pem")
        cert.verify_directly_issued_by(ca)  # raises if the CA did not sign it
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        got = san.get_values_for_type(x509.IPAddress) + san.get_values_for_type(x509.DNSName)
        assert sorted(map(str, got)) == sorted(map(str, expected))
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        # a route both accepts and dials: the same certificate serves and authenticates
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_nothing_is_ever_overwritten(cli, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert cli("cluster", "certs", "--out", str(out), *NODES).returncode == 0
    before = digests(out)
    again = cli("cluster", "certs", "--out", str(out), "--node", "n2=10.0.0.2")
    assert again.returncode == 2 and "n2" in again.stderr and "overwritten" in again.stderr
    assert digests(out) == before


def test_a_node_added_later_is_signed_by_the_same_ca(cli, tmp_path: Path) -> None:
    out = tmp_path / "certs"
    assert cli("cluster", "certs", "--out", str(out), *NODES).returncode == 0
    before = digests(out)
    p = cli("cluster", "certs", "--out", str(out), "--node", "n4=10.0.0.4", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["ca_created"] is False
    after = digests(out)
    assert {k: after[k] for k in before} == before  # CA and old nodes untouched
    load(out / "n4.pem").verify_directly_issued_by(load(out / "ca.pem"))


def test_half_a_ca_or_a_malformed_node_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()  # in process: these are refusals before any key is made
    out = tmp_path / "certs"
    assert (
        runner.invoke(
            cli, ["cluster", "certs", "--out", str(out), "--node", "n1=127.0.0.1"]
        ).exit_code
        == 0
    )
    (out / "ca-key.pem").unlink()
    p = runner.invoke(cli, ["cluster", "certs", "--out", str(out), "--node", "n2=127.0.0.1"])
    assert p.exit_code == 2 and "ca-key.pem" in p.stderr and not (out / "n2.pem").exists()
    for node in ("n5", "=1.2.3.4", "n5=", "bad name=1.2.3.4"):
        p = runner.invoke(
            cli, ["cluster", "certs", "--out", str(tmp_path / "other"), "--node", node]
        )
        assert p.exit_code == 2 and "--node" in p.stderr, node
        assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.output
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
