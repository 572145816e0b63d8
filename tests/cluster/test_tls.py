"""TLS for every command that talks to NATS, against real TLS nats-servers (issue 4, point 4).

Certificates are made in the test with ``trustme``. One module-scoped server requires
TLS, a second one mutual TLS; the session's plain server plays the server that offers
no TLS at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner

from fixtures.plugin import NatsServer, unique_prefix
from membership.cli import cli as cli_group
from membership.connect import NatsTarget, connect_nats
from membership.embedded import EmbeddedServer, free_port
from membership.kv import KVStore
from membership.sqlite import SQLiteStore
from tests.helpers import one_line_error

A, B = "aa" * 32, "bb" * 32


@dataclass
class TLSServer:
    server: NatsServer
    ca: Path
    dir: Path

    @property
    def port(self) -> int:
        return self.server.server.port


@contextlib.contextmanager
def _tls_server(
    tmp_path_factory: pytest.TempPathFactory, *, mutual: bool, host: str = "127.0.0.1"
) -> Iterator[TLSServer]:
    base = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    leaf = ca.issue_cert(host, "localhost", "127.0.0.1")
    leaf.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
    leaf.private_key_pem.write_to_path(str(base / "server-key.pem"))
    client = ca.issue_cert("membershipd.client")
    client.cert_chain_pems[0].write_to_path(str(base / "client.pem"))
    client.private_key_pem.write_to_path(str(base / "client-key.pem"))
    args = [
        "--tls",
        "--tlscert",
        str(base / "server.pem"),
        "--tlskey",
        str(base / "server-key.pem"),
    ]
    if mutual:
        args += ["--tlsverify", "--tlscacert", str(base / "ca.pem")]
    server = EmbeddedServer(store_dir=base / "store", host=host, monitor_port=0, extra_args=args)
    server.start()
    try:
        yield TLSServer(NatsServer(server), base / "ca.pem", base)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    with _tls_server(tmp_path_factory, mutual=False) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    with _tls_server(tmp_path_factory, mutual=True) as server:
        yield server


async def _build(path: Path) -> None:
    store = SQLiteStore.open(path, create=True)
    try:
        await store.add_user("alice", bytes.fromhex(A))
        await store.add_user("bob", bytes.fromhex(B))
        await store.create_room("ops.team", "alice")
        await store.add_member("ops.team", "bob")
        await store.put_sealed_key("ops.team", "bob", b"\x01\x02")
    finally:
        await store.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "control.db"
    asyncio.run(_build(path))
    return path


def quiet_success(p: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Exit 0, and stderr free of asyncio's TLS noise (DESIGN: progress and notices only).

    nats-py upgrades to TLS with a protocol asyncio never tells it is over SSL, so each
    closed session used to log "returning true from eof_received() has no effect when
    using ssl" (nats-io/nats.py#574); membership.connect completes the upgrade.
    """
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr!r}"
    assert "eof_received" not in p.stderr, p.stderr
    assert "sslproto" not in p.stderr and "Traceback" not in p.stderr, p.stderr
    return p


def test_every_kv_command_works_over_tls_with_ca(cli, db: Path, tls_server: TLSServer) -> None:
    prefix = unique_prefix("tls")
    ca = str(tls_server.ca)
    # both spellings: tls:// and nats:// (upgraded because the server requires TLS)
    tls_url = f"tls://127.0.0.1:{tls_server.port}"
    nats_url = f"nats://localhost:{tls_server.port}"
    common = ["--ca", ca, "--bucket-prefix", prefix]
    report = quiet_success(
        cli("migrate-to-kv", "--db", str(db), "--nats-url", tls_url, *common, "--json")
    )
    assert json.loads(report.stdout)["verified"] is True
    quiet_success(cli("verify", "--db", str(db), "--nats-url", nats_url, *common))
    from_kv = quiet_success(cli("export", "--nats-url", tls_url, *common))
    assert from_kv.stdout == cli("export", "--db", str(db)).stdout
    quiet_success(cli("room", "rekey", "--nats-url", nats_url, *common, "ops.team"))
    shown = quiet_success(cli("room", "show", "--nats-url", tls_url, *common, "ops.team", "--json"))
    assert json.loads(shown.stdout)["room"]["epoch"] == 2
    assert tls_server.server.stream_seqs(prefix)  # the buckets are on the TLS server


async def test_a_tls_session_rides_out_a_server_restart_over_tls_and_quietly(
    tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The TLS upgrade is membership.connect's own: it must survive a reconnect (nats-py
    reuses the transport) and a session ended by the server must log nothing."""
    caplog.set_level(logging.DEBUG, logger="asyncio")
    with _tls_server(tmp_path_factory, mutual=False) as tls:
        nc = await connect_nats(NatsTarget(f"tls://127.0.0.1:{tls.port}", str(tls.ca)))
        try:
            kv = await KVStore.open(nc, unique_prefix("tls"), create=True)
            await kv.add_user("alice", bytes.fromhex(A))
            tls.server.server.stop()  # the server ends the TLS session: EOF on SSL
            tls.server.server.start()  # same port, same store
            # Poll the reconnect with a deadline: connect_nats owns the client's callbacks,
            # so there is no event to wait on.
            async with asyncio.timeout(20):
                while not (nc.is_connected and nc.stats["reconnects"] >= 1):  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            user = await kv.get_user("alice")  # the server requires TLS: this is over TLS
            assert user is not None and user.id == "alice"
        finally:
            await nc.close()
    noise = [r.getMessage() for r in caplog.records if "eof_received" in r.getMessage()]
    assert noise == []


def test_a_wrong_ca_is_exit_1_in_one_line_and_nothing_is_written(
    cli, db: Path, tls_server: TLSServer, tmp_path: Path
) -> None:
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    prefix = unique_prefix("tls")
    url = f"tls://127.0.0.1:{tls_server.port}"
    for args in (
        ["migrate-to-kv", "--db", str(db)],
        ["verify", "--db", str(db)],
        ["export"],
        ["user", "list"],
    ):
        start = time.monotonic()
        p = cli(
            *args,
            "--nats-url",
            url,
            "--ca",
            str(tmp_path / "other-ca.pem"),
            "--bucket-prefix",
            prefix,
        )
        line = one_line_error(p, 1)
        assert url in line and "certificate verification failed" in line and "--ca" in line
        assert time.monotonic() - start < 15
    assert tls_server.server.stream_seqs(prefix) == {}
    assert not [f for f in db.parent.iterdir() if "backup" in f.name]


def test_a_server_that_offers_no_tls_is_refused_when_ca_is_given(
    cli, db: Path, namespace, tls_server: TLSServer
) -> None:
    # The session's plain server plays a downgrading man in the middle: with --ca the
    # client must not fall back to cleartext.
    for url in (namespace.url, namespace.url.replace("nats://", "tls://")):
        p = cli(
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            url,
            "--ca",
            str(tls_server.ca),
            "--bucket-prefix",
            namespace.prefix,
        )
        assert "does not offer TLS" in one_line_error(p, 1)
    assert namespace.stream_seqs() == {}


def test_mutual_tls_needs_the_client_certificate(cli, db: Path, mtls_server: TLSServer) -> None:
    prefix = unique_prefix("tls")
    url = f"tls://127.0.0.1:{mtls_server.port}"
    base = ["--nats-url", url, "--ca", str(mtls_server.ca), "--bucket-prefix", prefix]
    without = cli("migrate-to-kv", "--db", str(db), *base)
    assert url in one_line_error(without, 1)
    assert mtls_server.server.stream_seqs(prefix) == {}
    cert = [
        "--cert",
        str(mtls_server.dir / "client.pem"),
        "--key",
        str(mtls_server.dir / "client-key.pem"),
    ]
    quiet_success(cli("migrate-to-kv", "--db", str(db), *base, *cert, "--no-backup"))
    quiet_success(cli("verify", "--db", str(db), *base, *cert))
    half = cli("export", *base, "--cert", str(mtls_server.dir / "client.pem"))
    assert "--key" in one_line_error(half, 2)


STORE_COMMANDS = [
    ["migrate-to-kv", "--db", "{db}"],
    ["verify", "--db", "{db}"],
    ["export"],
    ["user", "add", "x", "--public-key", A],
    ["user", "revoke", "x"],
    ["user", "list"],
    ["room", "create", "r", "--owner", "x"],
    ["room", "add-member", "r", "x"],
    ["room", "remove-member", "r", "x"],
    ["room", "rekey", "r"],
    ["room", "list"],
    ["room", "show", "r"],
    ["keys", "put", "r", "x", "--sealed-key", "01"],
    ["keys", "get", "r", "x"],
]


@pytest.mark.parametrize("url", ["nats://10.255.255.1:4222", "tls://nats.example.invalid:4222"])
def test_a_remote_url_without_ca_is_refused_before_connecting_by_every_command(
    db: Path, url: str
) -> None:
    # 10.255.255.1 is a black hole: a command that tried to connect would hang for the
    # connect timeout and then fail with exit 1. Exit 2 naming --ca means it never tried.
    # The whole matrix runs in-process (the refusal is pure logic); the subprocess test
    # below checks the installed binary the same way.
    runner = CliRunner()
    for command in STORE_COMMANDS:
        args = [a.replace("{db}", str(db)) for a in command]
        result = runner.invoke(cli_group, [*args, "--nats-url", url])
        assert result.exit_code == 2, (command, result.output)
        assert "--ca" in result.output and "Traceback" not in result.output, command
    assert not [f for f in db.parent.iterdir() if "backup" in f.name]


def test_the_installed_binary_refuses_a_remote_url_without_ca_at_once(cli, db: Path) -> None:
    start = time.monotonic()
    p = cli("migrate-to-kv", "--db", str(db), "--nats-url", "nats://10.255.255.1:4222")
    assert "--ca" in one_line_error(p, 2)
    assert time.monotonic() - start < 10
    assert not [f for f in db.parent.iterdir() if "backup" in f.name]


def local_non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
            address = str(s.getsockname()[0])
        except OSError:
            return None
    if address.startswith("127.") or address == "0.0.0.0":
        return None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return None
    return address


def test_a_remote_url_with_ca_connects_over_tls(
    cli, db: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    address = local_non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to serve TLS on")
    with _tls_server(tmp_path_factory, mutual=False, host=address) as server:
        url = f"tls://{address}:{server.port}"
        prefix = unique_prefix("tls")
        refused = cli("export", "--nats-url", url, "--bucket-prefix", prefix)
        assert "--ca" in one_line_error(refused, 2)
        ok = cli(
            "migrate-to-kv",
            "--db",
            str(db),
            "--nats-url",
            url,
            "--ca",
            str(server.ca),
            "--bucket-prefix",
            prefix,
            "--no-backup",
            "--json",
        )
        assert json.loads(quiet_success(ok).stdout)["verified"] is True


def test_unreachable_tls_server_fails_fast(cli, tls_server: TLSServer) -> None:
    url = f"tls://127.0.0.1:{free_port()}"
    start = time.monotonic()
    p = cli("export", "--nats-url", url, "--ca", str(tls_server.ca), timeout=30)
    assert url in one_line_error(p, 1)
    assert time.monotonic() - start < 15
