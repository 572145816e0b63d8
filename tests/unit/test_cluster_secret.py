"""Route secret resolution and route credential injection (issue 4, points 1 and 2)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from membership.cluster import (
    DEFAULT_CLUSTER_PORT,
    PASS_ENV,
    ROUTE_USER,
    ClusterSecret,
    inject_route_creds,
    parse_listen,
    redact_route,
    resolve_cluster_pass,
)
from membership.errors import InvalidInputError

SECRET = "s3cret-route-pass"


def pass_file(tmp_path: Path, content: str | bytes, mode: int = 0o600, name: str = "pass") -> Path:
    path = tmp_path / name
    data = content.encode() if isinstance(content, str) else content
    path.write_bytes(data)
    path.chmod(mode)
    return path


# -- resolve_cluster_pass: precedence -------------------------------------------------------


def test_file_beats_environment_beats_legacy_flag(tmp_path: Path) -> None:
    path = pass_file(tmp_path, "from-file\n")
    env = {PASS_ENV: "from-env"}
    assert resolve_cluster_pass(path, "from-flag", environ=env).reveal() == "from-file"
    assert resolve_cluster_pass(None, "from-flag", environ=env).reveal() == "from-env"
    assert resolve_cluster_pass(None, "from-flag", environ={}).reveal() == "from-flag"


def test_only_the_legacy_flag_warns_and_the_warning_holds_no_secret(tmp_path: Path) -> None:
    warnings: list[str] = []
    resolve_cluster_pass(pass_file(tmp_path, SECRET), None, environ={}, warn=warnings.append)
    resolve_cluster_pass(None, None, environ={PASS_ENV: SECRET}, warn=warnings.append)
    assert warnings == []
    resolve_cluster_pass(None, SECRET, environ={}, warn=warnings.append)
    assert len(warnings) == 1 and "ps" in warnings[0] and "--cluster-pass-file" in warnings[0]
    assert SECRET not in warnings[0]


def test_no_source_at_all_is_an_error_naming_the_ways_to_give_one() -> None:
    with pytest.raises(InvalidInputError, match=r"--cluster-pass-file.*UNIBUS_CLUSTER_PASS"):
        resolve_cluster_pass(None, None, environ={})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw", "pw"),
        ("  spaced pw \n", "  spaced pw "),
        ("p@ss:/%w0rd ü\n", "p@ss:/%w0rd ü"),
    ],
)
def test_trailing_newline_is_stripped_and_nothing_else(
    tmp_path: Path, content: str, expected: str
) -> None:
    assert resolve_cluster_pass(pass_file(tmp_path, content), environ={}).reveal() == expected


# -- resolve_cluster_pass: a named file that is wrong never falls through --------------------


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    return {
        "missing": (tmp_path / "nope", "does not exist"),
        "empty": (pass_file(tmp_path, "", name="empty"), "empty"),
        "only a newline": (pass_file(tmp_path, "\n", name="nl"), "empty"),
        "group readable": (pass_file(tmp_path, SECRET, 0o640, "g"), "chmod 600"),
        "world readable": (pass_file(tmp_path, SECRET, 0o604, "o"), "chmod 600"),
        "a directory": (tmp_path, "not a regular file"),
        "not UTF-8": (pass_file(tmp_path, b"\xff\xfe", name="bin"), "UTF-8"),
        "two lines": (pass_file(tmp_path, "a\nb\n", name="two"), "control character"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "only a newline",
        "group readable",
        "world readable",
        "a directory",
        "not UTF-8",
        "two lines",
    ],
)
def test_a_bad_pass_file_is_an_error_even_when_other_sources_exist(
    tmp_path: Path, case: str
) -> None:
    path, message = bad_files(tmp_path)[case]
    with pytest.raises(InvalidInputError, match=message) as info:
        resolve_cluster_pass(path, "legacy-secret", environ={PASS_ENV: "env-secret"})
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    for secret in (SECRET, "legacy-secret", "env-secret"):
        assert secret not in text


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(InvalidInputError, match="not a regular file"):
        resolve_cluster_pass(fifo, environ={})


def test_systemd_credentials_are_exempt_from_the_mode_check(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    path = pass_file(creds, SECRET + "\n", 0o440, "route")  # an ACL mask shows in group bits
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert resolve_cluster_pass(path, environ=env).reveal() == SECRET
    outside = pass_file(tmp_path, SECRET, 0o440, "elsewhere")
    with pytest.raises(InvalidInputError, match="chmod 600"):
        resolve_cluster_pass(outside, environ=env)


def test_empty_environment_value_is_an_error_not_a_fall_through() -> None:
    with pytest.raises(InvalidInputError, match="UNIBUS_CLUSTER_PASS is set but empty"):
        resolve_cluster_pass(None, "legacy", environ={PASS_ENV: ""})


def test_a_secret_nats_server_would_read_as_a_bcrypt_hash_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="bcrypt"):
        resolve_cluster_pass(None, None, environ={PASS_ENV: "$2a$11$abcdefghijklmnopqrstuv"})


def test_the_secret_object_never_shows_its_value(tmp_path: Path) -> None:
    secret = resolve_cluster_pass(pass_file(tmp_path, SECRET), environ={})
    assert isinstance(secret, ClusterSecret)
    for text in (str(secret), repr(secret), f"{secret}", f"{secret!r}"):
        assert SECRET not in text
    assert secret.source == f"--cluster-pass-file {tmp_path / 'pass'}"


# -- inject_route_creds ---------------------------------------------------------------------------

secrets = st.text(min_size=1, max_size=64) | st.text(alphabet="@:/%?#[]!$&'()*+,;= ü", min_size=1)


@given(
    secret=secrets,
    port=st.integers(1, 65535),
    host=st.sampled_from(["127.0.0.1", "n1.internal", "[::1]"]),
)
def test_the_injected_secret_parses_back_exactly(secret: str, port: int, host: str) -> None:
    [route] = inject_route_creds([f"nats://{host}:{port}"], secret)
    parts = urlsplit(route)
    assert parts.scheme == "nats" and parts.port == port
    assert parts.hostname == host.strip("[]")
    assert unquote(parts.username or "") == ROUTE_USER
    assert unquote(parts.password or "", errors="strict") == secret


@given(secret=secrets)
def test_entries_with_userinfo_are_kept_exactly_as_written(secret: str) -> None:
    assume(secret)
    written = [
        "nats://other:pre%40set@10.0.0.2:6250",
        "nats-route://justuser@10.0.0.3:7000",
        "nats://10.0.0.4:6250",
    ]
    out = inject_route_creds(written, secret)
    assert out[:2] == written[:2]
    assert unquote(urlsplit(out[2]).password or "") == secret


def test_bare_entries_get_the_default_port_and_comma_lists_are_split() -> None:
    out = inject_route_creds(["nats://a.internal, nats://b.internal:7000"], "pw")
    assert out == [
        f"nats://route:pw@a.internal:{DEFAULT_CLUSTER_PORT}",
        "nats://route:pw@b.internal:7000",
    ]


@pytest.mark.parametrize(
    "entry",
    [
        "127.0.0.1:6250",
        "http://127.0.0.1:6250",
        "nats://",
        "nats://:6250",
        "nats://host:notaport",
        "nats://host:99999",
        "nats://host:0",
        "nats://host:6250/path",
        "nats://host:6250?q=1",
        "nats://ho st:6250",
        "nats://[::1%lo]:6250",
        "nats://a,,nats://b",
    ],
)
def test_malformed_routes_are_a_clear_error(entry: str) -> None:
    with pytest.raises(InvalidInputError, match="--routes"):
        inject_route_creds([entry], "pw")


def test_errors_about_routes_never_show_a_password() -> None:
    with pytest.raises(InvalidInputError) as info:
        inject_route_creds(["nats://user:hunter2@host:6250/x"], "pw")
    assert "hunter2" not in str(info.value) and "user:***@host" in str(info.value)
    assert redact_route("nats://route:p%40ss@h:1") == "nats://route:***@h:1"
    assert redact_route("nats://h:1") == "nats://h:1"
    assert redact_route("nats://u:pw@h:1/a@b") == "nats://u:***@h:1/a@b"
    assert redact_route("nats://u@h:1") == "nats://u@h:1"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:7000", ("127.0.0.1", 7000)),
        ("127.0.0.1", ("127.0.0.1", DEFAULT_CLUSTER_PORT)),
        ("localhost", ("localhost", DEFAULT_CLUSTER_PORT)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", DEFAULT_CLUSTER_PORT)),
        (":7000", ("0.0.0.0", 7000)),
        ("7000", ("0.0.0.0", 7000)),
    ],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value, DEFAULT_CLUSTER_PORT, "--cluster-listen") == expected


@pytest.mark.parametrize("value", ["::1", "h:0", "h:x", "[::1", "h o:1", "[::1]x"])
def test_bad_listen_addresses(value: str) -> None:
    with pytest.raises(InvalidInputError, match="--cluster-listen"):
        parse_listen(value, DEFAULT_CLUSTER_PORT, "--cluster-listen")
