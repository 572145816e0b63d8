"""``membershipd cluster config``: the node's configuration, its file, its refusals (point 5).

The configuration's string quoting is checked against the real nats-server parser:
a property test writes arbitrary secrets into a server's configuration, reloads it,
and logs in with the secret.
"""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nats
import pytest
from click.testing import CliRunner, Result
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from membership.cli import cli as membershipd
from membership.cluster import _BCRYPT_RE, conf_string
from membership.embedded import find_nats_server, free_port, wait_for_port

SECRET = 'r0ute "p@ss":/%\\w0rd ü'


def write_pass(path: Path, secret: str = SECRET, mode: int = 0o600) -> Path:
    path.write_text(secret + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


def node_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "cluster",
        "config",
        "--out",
        str(tmp_path / "n1.conf"),
        "--server-name",
        "n1",
        "--store-dir",
        str(tmp_path / "store"),
        *extra,
    ]


def test_the_config_is_0600_and_routes_carry_the_encoded_secret(cli, tmp_path: Path) -> None:
    secret_file = write_pass(tmp_path / "route.secret")
    p = cli(
        *node_args(
            tmp_path,
            "--cluster-pass-file",
            str(secret_file),
            "--cluster-listen",
            "127.0.0.1:16250",
            "--routes",
            "nats://127.0.0.1:16250,nats://127.0.0.1:16251",
            "--routes",
            "nats://keep:as%40written@127.0.0.1:16252",
            "--json",
        )
    )
    assert p.returncode == 0, p.stderr
    config = tmp_path / "n1.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    text = config.read_text(encoding="utf-8")
    encoded = quote(SECRET, safe="")
    assert f'"nats://route:{encoded}@127.0.0.1:16250"' in text
    assert f'"nats://route:{encoded}@127.0.0.1:16251"' in text
    assert '"nats://keep:as%40written@127.0.0.1:16252"' in text
    assert 'listen: "127.0.0.1:16250"' in text and 'name: "unibus"' in text
    assert f'store_dir: "{tmp_path / "store"}"' in text
    summary = json.loads(p.stdout)
    assert summary["routes"] == [
        "nats://route:***@127.0.0.1:16250",
        "nats://route:***@127.0.0.1:16251",
        "nats://keep:***@127.0.0.1:16252",
    ]
    assert summary["secret_source"] == f"--cluster-pass-file {secret_file}"
    for output in (p.stdout, p.stderr):
        assert SECRET not in output and encoded not in output and "as%40written" not in output


def test_a_config_nats_server_accepts(cli, tmp_path: Path) -> None:
    secret_file = write_pass(tmp_path / "route.secret")
    p = cli(
        *node_args(
            tmp_path, "--cluster-pass-file", str(secret_file), "--routes", "nats://127.0.0.1:6250"
        )
    )
    assert p.returncode == 0, p.stderr
    check = subprocess.run(
        [str(find_nats_server()), "-c", str(tmp_path / "n1.conf"), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr + check.stdout


def test_the_environment_secret_and_the_legacy_flag(cli, tmp_path: Path) -> None:
    env_run = cli.__class__({**cli.env, "UNIBUS_CLUSTER_PASS": SECRET}, cli.cwd)
    p = env_run(*node_args(tmp_path, "--routes", "nats://127.0.0.1:6250"))
    assert p.returncode == 0 and "UNIBUS_CLUSTER_PASS" in p.stdout and p.stderr == ""
    legacy = cli(*node_args(tmp_path, "--cluster-pass", "dev-only-pass"))
    assert legacy.returncode == 0
    assert "warning: --cluster-pass" in legacy.stderr and "ps" in legacy.stderr
    assert "dev-only-pass" not in legacy.stderr + legacy.stdout
    assert 'password: "dev-only-pass"' in (tmp_path / "n1.conf").read_text()


def invoke(args: list[str], env: dict[str, str] | None = None) -> Result:
    """In process: refusals happen before any file is written or process started."""
    env = {"UNIBUS_CLUSTER_PASS": None, **(env or {})}  # None: unset while it runs
    return CliRunner(env=env).invoke(membershipd, args)


def refused(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_bad_pass_file_is_refused_even_with_the_environment_set(tmp_path: Path) -> None:
    loose = write_pass(tmp_path / "loose.secret", mode=0o644)
    for path, message in (
        (loose, "chmod 600"),
        (tmp_path / "missing.secret", "does not exist"),
        (write_pass(tmp_path / "empty.secret", ""), "empty"),
    ):
        args = node_args(tmp_path, "--cluster-pass-file", str(path), "--cluster-pass", "x")
        result = invoke(args, {"UNIBUS_CLUSTER_PASS": "env-pass"})
        line = refused(result)
        assert message in line and str(path) in line
        assert SECRET not in result.output and "env-pass" not in result.output
    assert not (tmp_path / "n1.conf").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cluster-listen", "0.0.0.0:6250"], "no route TLS"),
        (["--routes", "nats://10.0.0.2:6250"], "no route TLS"),
        (["--client-listen", "0.0.0.0:4222"], "--client-cert"),
        (["--cluster-cert", "x.pem", "--cluster-key", "x-key.pem"], "--cluster-ca"),
        (["--routes", "nats://user:hunter2@h:6250/p"], "user:***@h"),
        (["--routes", "http://h:6250"], "--routes"),
        (["--server-name", "has space"], "--server-name"),
        (["--cluster-listen", "127.0.0.1:70000"], "--cluster-listen"),
    ],
)
def test_insecure_or_malformed_settings_are_refused_without_writing(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    secret_file = write_pass(tmp_path / "route.secret")
    line = refused(invoke(node_args(tmp_path, "--cluster-pass-file", str(secret_file), *extra)))
    assert message in line and "hunter2" not in line and SECRET not in line
    assert not (tmp_path / "n1.conf").exists()


def test_no_secret_at_all_is_refused(tmp_path: Path) -> None:
    line = refused(invoke(node_args(tmp_path)))
    assert "--cluster-pass-file" in line and "UNIBUS_CLUSTER_PASS" in line


# -- conf_string against the real configuration parser -------------------------------------------


class ReloadingServer:
    """One nats-server whose configuration a test rewrites and reloads (SIGHUP)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.monitor = free_port()
        self.config = base / "auth.conf"
        self.write("initial-password")
        self.proc = subprocess.Popen(
            [str(find_nats_server()), "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_for_port("127.0.0.1", self.port, 20, self.proc), "nats-server did not start"

    def write(self, password: str) -> None:
        self.config.write_text(
            f'listen: "127.0.0.1:{self.port}"\n'
            f'http: "127.0.0.1:{self.monitor}"\n'
            f"authorization {{\n  user: {conf_string('u')}\n  password: {conf_string(password)}\n}}\n",
            encoding="utf-8",
        )

    def varz(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}/varz", timeout=5) as resp:
            return json.load(resp)  # type: ignore[no-any-return]

    def reload(self, password: str) -> None:
        from fixtures.cluster import poll_until

        before = self.varz()["config_load_time"]
        self.write(password)
        self.proc.send_signal(signal.SIGHUP)
        poll_until(lambda: self.varz()["config_load_time"] != before, 5, "configuration reload")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def reloading_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReloadingServer]:
    server = ReloadingServer(tmp_path_factory.mktemp("conf"))
    try:
        yield server
    finally:
        server.stop()


async def logs_in(port: int, password: str) -> bool:
    try:
        nc = await nats.connect(
            f"nats://127.0.0.1:{port}",
            user="u",
            password=password,
            allow_reconnect=False,
            connect_timeout=2,
        )
    except Exception:
        return False
    await nc.close()
    return True


@settings(max_examples=max(10, settings.default.max_examples // 2))
@given(secret=st.text(min_size=1, max_size=40))
def test_nats_server_reads_back_exactly_the_secret_written(
    reloading_server: ReloadingServer, secret: str
) -> None:
    assume(not _BCRYPT_RE.match(secret))
    reloading_server.reload(secret)
    assert asyncio.run(logs_in(reloading_server.port, secret))
    assert not asyncio.run(logs_in(reloading_server.port, secret + "x"))


def test_conf_string_escapes_what_the_lexer_would_interpret() -> None:
    assert conf_string('a"b\\c') == '"a\\"b\\\\c"'
    assert conf_string("line\nbreak\t") == '"line\\x0abreak\\x09"'
    assert conf_string("$VAR ü") == '"$VAR ü"'
