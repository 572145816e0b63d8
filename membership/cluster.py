"""Clustering: the route secret, route URLs, nats-server node configuration, route certificates.

A JetStream cluster of ``nats-server`` nodes is held together by *routes*. Three
findings of the cluster-hardening audit shape this module:

* the route secret never goes on a command line (``ps`` and ``/proc/PID/cmdline`` show
  it to every local user). :func:`resolve_cluster_pass` takes it from a 0600 file, the
  environment, or -- legacy, with a warning -- a flag, and a named file that is
  missing, empty or readable by others is an error rather than a fall-through;
* bare ``--routes`` entries get the route user and the percent-encoded secret
  (:func:`inject_route_creds`); entries that carry their own userinfo stay as written;
* the node's configuration (:func:`render_node_config`) is written to a 0600 file
  (:func:`write_private_file`), so ``nats-server`` runs with ``-c FILE`` as its only
  argument. Routes use a *separate* cluster CA (:func:`generate_cluster_certs`), not
  the CA that clients trust, and a node that routes or listens beyond loopback must
  use it: the route layer carries the secret and every replicated record.

:func:`describe_offline_stream` turns JetStream's "stream is offline" into a message
that names the servers holding the lost replicas (an R1 bucket is a single point of
failure of the allowlist).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, quote, urlsplit

from .connect import host_is_loopback
from .errors import InvalidInputError, NatsUnavailableError

__all__ = [
    "DEFAULT_CLIENT_PORT",
    "DEFAULT_CLUSTER_PORT",
    "PASS_ENV",
    "ROUTE_USER",
    "ClusterSecret",
    "NodeConfig",
    "TLSFiles",
    "describe_offline_stream",
    "generate_cluster_certs",
    "inject_route_creds",
    "parse_listen",
    "redact_route",
    "render_node_config",
    "resolve_cluster_pass",
    "write_private_file",
]

PASS_ENV: Final = "UNIBUS_CLUSTER_PASS"
ROUTE_USER: Final = "route"
DEFAULT_CLUSTER_PORT: Final = 6250
DEFAULT_CLIENT_PORT: Final = 4222
ROUTE_SCHEMES: Final = ("nats-route", "nats", "tls")
STREAM_OFFLINE: Final = 10118
"""JetStream API error code: every replica of the stream is unreachable."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# nats-server treats a password of this shape as a bcrypt hash, not as the secret.
_BCRYPT_RE: Final = re.compile(r"\$2[abxy]?\$\d\d\$")


# -- the route secret ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSecret:
    """The resolved route secret and where it came from.

    ``str()`` and ``repr()`` never show the value, so an f-string or a log line that
    picks the object up by mistake leaks nothing; :meth:`reveal` is the one way out.
    """

    _value: str = field(repr=False)
    source: str

    def reveal(self) -> str:
        return self._value

    def __str__(self) -> str:
        return f"<cluster secret from {self.source}>"

    def __repr__(self) -> str:
        return f"ClusterSecret(source={self.source!r})"


def resolve_cluster_pass(
    pass_file: str | os.PathLike[str] | None = None,
    legacy: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> ClusterSecret:
    """The route secret: ``--cluster-pass-file`` > ``$UNIBUS_CLUSTER_PASS`` > ``--cluster-pass``.

    A named file that is missing, unreadable, empty, or open to group/others is an
    error -- never a fall-through to the next source, which would silently run the
    cluster with another secret than the operator named. One trailing newline (as
    ``echo`` and editors leave it) is stripped. Files under systemd's
    ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=``) are exempt from the mode check:
    systemd makes them readable by the unit's user alone, sometimes through an ACL
    whose mask shows in the group bits. ``--cluster-pass`` still works for development
    and ``warn`` is told that it is visible in ``ps``.
    """
    env = os.environ if environ is None else environ
    if pass_file is not None:
        path = Path(pass_file)
        value = _read_secret_file(path, env)
        what = f"--cluster-pass-file {path}"
        return ClusterSecret(_check_secret(value, what), what)
    if PASS_ENV in env:
        value = env[PASS_ENV].rstrip("\r\n")
        if not value:
            raise InvalidInputError(
                f"${PASS_ENV} is set but empty; give it the route secret, or unset it"
            )
        return ClusterSecret(_check_secret(value, f"${PASS_ENV}"), f"${PASS_ENV}")
    if legacy is not None:
        if not legacy:
            raise InvalidInputError("--cluster-pass is empty; use --cluster-pass-file FILE")
        if warn is not None:
            warn(
                "warning: --cluster-pass puts the route secret on the command line, where "
                "`ps` and /proc show it to every local user; use --cluster-pass-file FILE "
                f"(mode 0600) or ${PASS_ENV} instead"
            )
        return ClusterSecret(_check_secret(legacy, "--cluster-pass"), "--cluster-pass")
    raise InvalidInputError(
        f"no cluster route secret: give --cluster-pass-file FILE (mode 0600) or set ${PASS_ENV}"
    )


def _in_credentials_dir(path: Path, env: Mapping[str, str]) -> bool:
    creds = env.get("CREDENTIALS_DIRECTORY")
    if not creds:
        return False
    try:
        return path.resolve().is_relative_to(Path(creds).resolve())
    except OSError:
        return False


def _read_secret_file(path: Path, env: Mapping[str, str]) -> str:
    what = f"--cluster-pass-file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
    except FileNotFoundError:
        raise InvalidInputError(f"{what} does not exist") from None
    except OSError as exc:
        raise InvalidInputError(f"{what} cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"{what} is not a regular file")
        if info.st_mode & 0o077 and not _in_credentials_dir(path, env):
            raise InvalidInputError(
                f"{what} is open to group/others (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"run `chmod 600 {path}`"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(64 * 1024 + 1)
    except OSError as exc:
        raise InvalidInputError(f"{what} cannot be read ({exc.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > 64 * 1024:
        raise InvalidInputError(f"{what} is larger than 64 KiB; is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what} is not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise InvalidInputError(f"{what} is empty")
    return text


def _check_secret(value: str, what: str) -> str:
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value):
        raise InvalidInputError(
            f"the route secret from {what} contains a control character "
            "(a line break inside it?); use one line of text"
        )
    if _BCRYPT_RE.match(value):
        raise InvalidInputError(
            f"the route secret from {what} looks like a bcrypt hash, which nats-server "
            "would not accept as a password; choose another secret"
        )
    return value


# -- routes --------------------------------------------------------------------------------------


def _split_route(entry: str) -> SplitResult:
    if not entry or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in entry):
        raise InvalidInputError(
            f"--routes entry {redact_route(entry)!r} is empty or contains whitespace"
        )
    try:
        parts = urlsplit(entry)
        port = parts.port
    except ValueError:
        raise InvalidInputError(
            f"--routes entry {redact_route(entry)!r} is not a URL (nats://HOST:PORT)"
        ) from None
    if parts.scheme.lower() not in ROUTE_SCHEMES or not parts.netloc:
        raise InvalidInputError(
            f"--routes entry {redact_route(entry)!r} is not a route URL; expected "
            f"nats://HOST:{DEFAULT_CLUSTER_PORT} (or nats-route://)"
        )
    host = parts.hostname
    if not host or "%" in host or (port is not None and port == 0):
        raise InvalidInputError(f"--routes entry {redact_route(entry)!r} has no usable host/port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or entry.endswith(("?", "#")):
        raise InvalidInputError(
            f"--routes entry {redact_route(entry)!r} must not have a path, query or fragment"
        )
    return parts


def split_routes(routes: Iterable[str]) -> list[str]:
    """``--routes`` may repeat and each value may be a comma-separated list."""
    out: list[str] = []
    for value in routes:
        for entry in value.split(","):
            entry = entry.strip()
            if not entry:
                raise InvalidInputError(f"--routes {redact_route(value)!r} has an empty entry")
            out.append(entry)
    return out


def route_host(entry: str) -> str:
    """The host a route entry dials (validated)."""
    host = _split_route(entry).hostname
    assert host is not None
    return host


def inject_route_creds(
    routes: Iterable[str], secret: ClusterSecret | str, user: str = ROUTE_USER
) -> list[str]:
    """Give every bare route the route user and the percent-encoded secret.

    ``nats://host:6250`` becomes ``nats://route:<quote(secret)>@host:6250``; a missing
    port becomes :data:`DEFAULT_CLUSTER_PORT`. An entry with userinfo (``user@`` or
    ``user:pass@``) is returned exactly as written. Malformed entries raise
    :class:`InvalidInputError` naming the entry with any password masked.
    Percent-encoding leaves only ``A-Za-z0-9_.-~`` as they are, so ``@ : / % ?``
    and non-ASCII all survive the route URL parser of nats-server (Go's ``net/url``)
    and of Python's ``urllib`` unchanged.
    """
    value = secret.reveal() if isinstance(secret, ClusterSecret) else secret
    if not value:
        raise InvalidInputError("the route secret is empty")
    userinfo = f"{quote(user, safe='')}:{quote(value, safe='')}@"
    out: list[str] = []
    for entry in split_routes(routes):
        parts = _split_route(entry)
        if "@" in parts.netloc:
            out.append(entry)
            continue
        netloc = (
            parts.netloc if parts.port is not None else f"{parts.netloc}:{DEFAULT_CLUSTER_PORT}"
        )
        out.append(f"{parts.scheme}://{userinfo}{netloc}")
    return out


def redact_route(entry: str) -> str:
    """A route entry fit for a message: any userinfo password replaced by ``***``."""
    scheme_end = entry.find("://")
    if scheme_end == -1:
        return entry
    start = scheme_end + 3
    ends = [i for i in (entry.find(c, start) for c in "/?#") if i != -1]
    at = entry.rfind("@", start, min(ends, default=len(entry)))
    if at == -1:
        return entry
    userinfo = entry[start:at]
    user = userinfo.split(":", 1)[0]
    masked = f"{user}:***" if ":" in userinfo else user
    return f"{entry[: scheme_end + 3]}{masked}{entry[at:]}"


# -- listen addresses ------------------------------------------------------------------------


def parse_listen(value: str, default_port: int, what: str) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` -> (host, port).

    Without a host, every interface (``0.0.0.0``), as nats-server reads it.
    """
    text = value.strip()
    host, port_text = text, ""
    if text.isdigit():
        host, port_text = "", text
    elif text.startswith("["):
        end = text.find("]")
        if end == -1:
            raise InvalidInputError(f"{what} {value!r} is not HOST:PORT")
        host, rest = text[1:end], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidInputError(f"{what} {value!r} is not HOST:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise InvalidInputError(f"{what} {value!r}: write an IPv6 address as [ADDR]:PORT")
    if not host:
        host = "0.0.0.0"  # ":PORT" means every interface, as in nats-server
    if not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
        raise InvalidInputError(f"{what} {value!r} has an invalid host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise InvalidInputError(f"{what} {value!r} has an invalid port") from None
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"{what} {value!r}: the port must be 1 to 65535")
    return host, port


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the node configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    """A certificate, its key, and the CA that verifies the peers."""

    cert: Path
    key: Path
    ca: Path | None = None

    @classmethod
    def from_options(
        cls, prefix: str, ca: str | None, cert: str | None, key: str | None, *, need_ca: bool
    ) -> TLSFiles | None:
        given = {f"--{prefix}-ca": ca, f"--{prefix}-cert": cert, f"--{prefix}-key": key}
        if not any(given.values()):
            return None
        wanted = [f"--{prefix}-cert", f"--{prefix}-key"] + ([f"--{prefix}-ca"] if need_ca else [])
        missing = [name for name in wanted if not given[name]]
        if missing or (ca and not (cert and key)):
            raise InvalidInputError(
                f"{', '.join(wanted)} go together; missing: {', '.join(missing) or 'cert/key'}"
            )
        files = cls(
            Path(cert).resolve(),  # type: ignore[arg-type]
            Path(key).resolve(),  # type: ignore[arg-type]
            Path(ca).resolve() if ca else None,
        )
        for name, path in ((f"--{prefix}-cert", files.cert), (f"--{prefix}-key", files.key)):
            _require_readable(name, path)
        if files.ca is not None:
            _require_readable(f"--{prefix}-ca", files.ca)
        return files


def _require_readable(what: str, path: Path) -> None:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise InvalidInputError(f"{what} {path} is not a readable file")


@dataclass(frozen=True)
class NodeConfig:
    """Everything one nats-server node of the cluster needs."""

    server_name: str
    cluster_name: str
    secret: ClusterSecret
    store_dir: Path
    routes: tuple[str, ...] = ()
    cluster_listen: tuple[str, int] = ("127.0.0.1", DEFAULT_CLUSTER_PORT)
    client_listen: tuple[str, int] = ("127.0.0.1", DEFAULT_CLIENT_PORT)
    monitor_listen: tuple[str, int] | None = None
    cluster_tls: TLSFiles | None = None
    client_tls: TLSFiles | None = None

    def check(self) -> None:
        """Refuse a configuration that would be insecure or that nats-server would refuse."""
        for what, name in (
            ("--server-name", self.server_name),
            ("--cluster-name", self.cluster_name),
        ):
            if not _NAME_RE.fullmatch(name):
                raise InvalidInputError(
                    f"{what} {name!r} is not valid: use 1 to 64 of A-Z a-z 0-9 _ -"
                )
        hosts = [route_host(r) for r in self.routes]
        beyond = [h for h in [self.cluster_listen[0], *hosts] if not host_is_loopback(h)]
        if beyond and self.cluster_tls is None:
            raise InvalidInputError(
                f"the cluster reaches beyond loopback ({beyond[0]}) but has no route TLS; give "
                "--cluster-ca/--cluster-cert/--cluster-key (`membershipd cluster certs` makes them):"
                " routes carry the secret and every replicated record"
            )
        if self.cluster_tls is not None and self.cluster_tls.ca is None:
            raise InvalidInputError("--cluster-ca is required with --cluster-cert/--cluster-key")
        if not host_is_loopback(self.client_listen[0]) and self.client_tls is None:
            raise InvalidInputError(
                f"--client-listen {self.client_listen[0]} is not loopback but no client TLS is "
                "set; give --client-cert/--client-key (clients must not read the allowlist in "
                "cleartext)"
            )

    def injected_routes(self) -> list[str]:
        return inject_route_creds(self.routes, self.secret)

    def summary(self, config_path: Path | None = None) -> dict[str, Any]:
        """What the configuration says, without the secret: for ``--json`` and notices."""
        return {
            "config": str(config_path) if config_path is not None else None,
            "server_name": self.server_name,
            "cluster_name": self.cluster_name,
            "client_listen": _hostport(*self.client_listen),
            "cluster_listen": _hostport(*self.cluster_listen),
            "monitor_listen": _hostport(*self.monitor_listen) if self.monitor_listen else None,
            "routes": [redact_route(r) for r in self.injected_routes()],
            "route_tls": self.cluster_tls is not None,
            "client_tls": self.client_tls is not None,
            "store_dir": str(self.store_dir),
            "secret_source": self.secret.source,
        }


def conf_string(value: str) -> str:
    """A double-quoted nats-server configuration string.

    The configuration lexer knows the escapes ``\\\\ \\" \\t \\n \\r \\xXX`` and
    interprets nothing else inside double quotes (no ``$variable`` references).
    """
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif unicodedata.category(ch) == "Cc":
            out.extend(f"\\x{b:02x}" for b in ch.encode())
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _tls_block(files: TLSFiles, indent: str, *, verify: bool) -> list[str]:
    lines = [
        f"{indent}tls {{",
        f"{indent}  cert_file: {conf_string(str(files.cert))}",
        f"{indent}  key_file: {conf_string(str(files.key))}",
    ]
    if files.ca is not None:
        lines.append(f"{indent}  ca_file: {conf_string(str(files.ca))}")
    if verify:
        lines.append(f"{indent}  verify: true")
    lines += [f"{indent}  timeout: 5", f"{indent}}}"]
    return lines


def render_node_config(node: NodeConfig) -> str:
    """The node's nats-server configuration text (it holds the secret: write it 0600)."""
    node.check()
    lines = [
        "# nats-server configuration written by `membershipd cluster`; it holds the route",
        "# secret: keep it mode 0600 and out of version control.",
        f"server_name: {conf_string(node.server_name)}",
        f"listen: {conf_string(_hostport(*node.client_listen))}",
    ]
    if node.monitor_listen is not None:
        lines.append(f"http: {conf_string(_hostport(*node.monitor_listen))}")
    if node.client_tls is not None:
        lines += _tls_block(node.client_tls, "", verify=node.client_tls.ca is not None)
    lines += [
        "jetstream {",
        f"  store_dir: {conf_string(str(node.store_dir))}",
        "}",
        "cluster {",
        f"  name: {conf_string(node.cluster_name)}",
        f"  listen: {conf_string(_hostport(*node.cluster_listen))}",
        "  authorization {",
        f"    user: {conf_string(ROUTE_USER)}",
        f"    password: {conf_string(node.secret.reveal())}",
        "    timeout: 5",
        "  }",
        "  routes: [",
        *[f"    {conf_string(r)}" for r in node.injected_routes()],
        "  ]",
    ]
    if node.cluster_tls is not None:
        # Routes are mutual TLS: each node both dials and accepts, with the cluster CA.
        lines += _tls_block(node.cluster_tls, "  ", verify=True)
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically.

    The data goes into a new temporary file in the same directory (``mkstemp``
    creates it 0600) and is renamed over ``path``, so no reader ever sees a partial
    file or a moment in which the secret sits in a file open to others.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- certificates ----------------------------------------------------------------------------


def _san(value: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        return x509.DNSName(value)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def generate_cluster_certs(
    out: Path,
    nodes: Mapping[str, Sequence[str]],
    *,
    cluster_name: str = "unibus",
    days: int = 825,
    ca_days: int = 3650,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Make the cluster CA (unless ``out`` has one) and one route certificate per node.

    ``nodes`` maps a node name to the hosts (DNS names or IP addresses) its route
    URLs use; they become the certificate's subject alternative names. Route
    certificates serve and dial (EKU serverAuth + clientAuth). Keys are EC P-256,
    written 0600; nothing existing is ever overwritten. An existing ``ca.pem`` with
    ``ca-key.pem`` in ``out`` issues the new node certificates, so a node can be
    added later. Returns the paths written (and reused), never key material.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not nodes:
        raise InvalidInputError("give at least one --node NAME=HOST[,HOST...]")
    for name, hosts in nodes.items():
        if not _NAME_RE.fullmatch(name):
            raise InvalidInputError(f"--node name {name!r} is not valid: use A-Z a-z 0-9 _ -")
        if not hosts or any(not re.fullmatch(r"[A-Za-z0-9.:_*-]+", h) for h in hosts):
            raise InvalidInputError(f"--node {name}: give its hosts as NAME=HOST[,HOST...]")
    now = now or dt.datetime.now(dt.UTC)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_path, ca_key_path = out / "ca.pem", out / "ca-key.pem"
    node_paths = {n: (out / f"{n}.pem", out / f"{n}-key.pem") for n in nodes}
    taken = [p for pair in node_paths.values() for p in pair if p.exists()]
    if taken:
        raise InvalidInputError(
            f"{taken[0]} exists; certificates are never overwritten (remove it first)"
        )
    if ca_cert_path.exists() != ca_key_path.exists():
        raise InvalidInputError(f"{out} has only one of ca.pem and ca-key.pem; restore the other")

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    created_ca = not ca_cert_path.exists()
    if created_ca:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unibus"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster_name} cluster route CA"),
            ]
        )
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=ca_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write_new(ca_key_path, pem_key(ca_key), 0o600)
        _write_new(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    else:
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
            loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        except (ValueError, TypeError, OSError):
            raise InvalidInputError(f"cannot load the cluster CA from {out}") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise InvalidInputError(f"{ca_key_path} is not an EC key made by `cluster certs`")
        ca_key = loaded

    written: dict[str, Any] = {
        "ca": str(ca_cert_path),
        "ca_key": str(ca_key_path),
        "ca_created": created_ca,
        "nodes": {},
    }
    for name, hosts in nodes.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "unibus"),
                        x509.NameAttribute(NameOID.COMMON_NAME, name),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName([_san(h) for h in dict.fromkeys(hosts)]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path, key_path = node_paths[name]
        _write_new(key_path, pem_key(key), 0o600)
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written["nodes"][name] = {
            "cert": str(cert_path),
            "key": str(key_path),
            "hosts": list(dict.fromkeys(hosts)),
        }
    return written


# -- JetStream cluster state -----------------------------------------------------------------


async def describe_offline_stream(nc: Any, stream: str, where: str) -> NatsUnavailableError:
    """An error for "stream is offline" that names the servers holding its replicas.

    Asks ``$JS.API.STREAM.LIST`` (answered by the meta leader, which still knows the
    placement of a stream whose replicas are all gone) for the stream's peers.
    ``where`` says what was being done (it is used when the placement is unknown).
    """
    lost: list[str] = []
    replicas = 0
    try:
        msg = await nc.request(
            "$JS.API.STREAM.LIST",
            json.dumps({"subject": f"$KV.{stream.removeprefix('KV_')}.>"}).encode(),
            timeout=5,
        )
        for info in json.loads(msg.data).get("streams") or []:
            if info.get("config", {}).get("name") != stream:
                continue
            peers = (info.get("cluster") or {}).get("replicas") or []
            replicas = int(info["config"].get("num_replicas") or 1)
            lost = sorted(p.get("name", "?") for p in peers if p.get("offline"))
    except Exception:  # noqa: S110  (the placement is a detail of a message; the error stands)
        pass
    bucket = stream.removeprefix("KV_")
    if not lost:
        return NatsUnavailableError(
            f"{where}: bucket {bucket} is offline: the servers holding its replicas are "
            "unreachable; bring them back"
        )
    if replicas <= 1:
        return NatsUnavailableError(
            f"bucket {bucket} is offline: its only replica is on server {lost[0]}, which is "
            "unreachable. An R1 bucket is a single point of failure: bring that server back, "
            "and migrate with --replicas 3 for failover"
        )
    return NatsUnavailableError(
        f"bucket {bucket} is offline: {len(lost)} of its {replicas} replicas are on unreachable "
        f"servers ({', '.join(lost)}), too many for a quorum; bring them back"
    )
