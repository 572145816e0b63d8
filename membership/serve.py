"""``membershipd serve``: run the service, and the server whose door the allowlist keeps.

Where the state lives and where the service runs are separate choices:

========================================  =====================  ==========================
options                                   state                  server
========================================  =====================  ==========================
``--db PATH``                             SQLite                 the embedded nats-server
``--db PATH`` + node flags                SQLite                 a cluster node it runs
``--kv`` (+ node flags)                   KV on that server      embedded / a cluster node
``--nats-url URL`` (``--db PATH``)        KV there (SQLite)      an external server
========================================  =====================  ==========================

On a server it runs itself (a :class:`ManagedServer`: configuration 0600, nats-server
started with ``-c FILE`` only), ``serve`` writes the server's authorization from the
allowlist (:mod:`membership.authz`) and keeps it current: after every change it makes
(answered only once the server has reloaded), and after changes made by others
(another ``serve`` on the same KV namespace, a CLI command on the SQLite file), which
it notices within :data:`WATCH_INTERVAL`. On an external server the authorization is
the operator's; ``serve`` only connects (``--seed-file`` for its identity there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from nats.aio.client import Client

from .authz import DEFAULT_SUBJECT_PREFIX, allowlist, render_authorization
from .cluster import NodeConfig, conf_string, render_node_config, write_private_file
from .connect import NatsTarget, close_nats, connect_nats
from .embedded import (
    dying_with_this_process,
    find_nats_server,
    free_port,
    stop_process,
    wait_for_port,
)
from .errors import FailedError, InvalidInputError, NatsUnavailableError, StoreError
from .kv import DEFAULT_PREFIX, KVStore, validate_prefix
from .model import now_ms
from .nkey import generate_user_keypair, validate_nkey
from .service import MembershipService, validate_subject_prefix
from .sqlite import SQLiteStore
from .store import Store

__all__ = ["ManagedServer", "ServeOptions", "serve"]

WATCH_INTERVAL: Final = 0.5
"""Seconds between looks at the store for allowlist changes made by others."""
RELOAD_TIMEOUT: Final = 10.0
READY_TIMEOUT: Final = 30.0
KV_READY_TIMEOUT: Final = 30.0


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class ManagedServer:
    """A nats-server that ``serve`` runs, configured by a file only ``serve`` writes.

    ``render(authorization)`` gives the whole configuration for an authorization
    block; :meth:`reload` rewrites the file and signals the server, and returns once
    the server reports the new configuration loaded (its ``/varz``).
    """

    render: Callable[[str], str]
    config_path: Path
    client: tuple[str, int]
    monitor: tuple[str, int]
    proc: subprocess.Popen[bytes] | None = None
    authorization: str = ""
    log_path: Path | None = None
    _loaded: str = field(default="", repr=False)

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.client[0] in ("0.0.0.0", "") else self.client[0]
        return f"nats://{_hostport(host, self.client[1])}"

    @property
    def monitor_url(self) -> str:
        return f"http://{_hostport(*self.monitor)}"

    def start(self, authorization: str) -> None:
        binary = find_nats_server()
        self.authorization = authorization
        write_private_file(self.config_path, self.render(authorization))
        log = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                dying_with_this_process([str(binary), "-c", str(self.config_path)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # type: ignore[union-attr]
        host = "127.0.0.1" if self.client[0] in ("0.0.0.0", "") else self.client[0]
        if not wait_for_port(host, self.client[1], READY_TIMEOUT, self.proc):
            code = self.proc.poll()
            self.stop()
            raise FailedError(
                f"nats-server ({binary}) did not accept connections on {self.url} within "
                f"{READY_TIMEOUT:g} s (exit status {code}); its log: {self.log_path}"
            )
        self._loaded = self._config_load_time()

    def _config_load_time(self) -> str:
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2) as reply:
                return str(json.loads(reply.read()).get("config_load_time", ""))
        except (OSError, ValueError):
            return ""

    async def reload(self, authorization: str) -> bool:
        """Serve ``authorization`` from now on; False if it was already the one served."""
        if authorization == self.authorization:
            return False
        if self.proc is None or self.proc.poll() is not None:
            raise FailedError("the nats-server membershipd runs is not running any more")
        write_private_file(self.config_path, self.render(authorization))
        before = self._loaded
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_TIMEOUT
        while True:
            now = await asyncio.to_thread(self._config_load_time)
            if now and now != before:
                self._loaded = now
                break
            if time.monotonic() > deadline:
                raise FailedError(
                    f"nats-server did not reload its authorization within {RELOAD_TIMEOUT:g} s; "
                    f"its log: {self.log_path}"
                )
            await asyncio.sleep(0.02)
        self.authorization = authorization
        return True

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout)


@dataclass
class ServeOptions:
    db: Path | None = None
    kv: bool = False
    target: NatsTarget | None = None
    bucket_prefix: str = DEFAULT_PREFIX
    subject_prefix: str = DEFAULT_SUBJECT_PREFIX
    admin_nkeys: tuple[str, ...] = ()
    replicas: int = 1
    client_listen: tuple[str, int] = ("127.0.0.1", 4222)
    monitor_listen: tuple[str, int] | None = None
    store_dir: Path | None = None
    node: NodeConfig | None = None

    def check(self) -> None:
        if self.db is None and not self.kv and self.target is None:
            raise InvalidInputError(
                "give --db PATH (state in SQLite), --nats-url URL (state in KV there) or --kv "
                "(state in KV on the server serve runs)"
            )
        if self.db is not None and self.kv:
            raise InvalidInputError("--db and --kv contradict each other: the state is in one")
        if self.target is not None and self.node is not None:
            raise InvalidInputError(
                "--nats-url names an external server; the node flags (--server-name ...) "
                "make serve run one: give one or the other"
            )
        if self.target is not None and self.kv:
            raise InvalidInputError("--kv is for the server serve runs; --nats-url already says KV")
        validate_prefix(self.bucket_prefix)
        validate_subject_prefix(self.subject_prefix)
        for admin in self.admin_nkeys:
            validate_nkey(admin, "--admin-nkey")
        if not 1 <= self.replicas <= 5:
            raise InvalidInputError(f"--replicas must be 1 to 5, not {self.replicas}")

    @property
    def managed(self) -> bool:
        return self.target is None


def _base_config(
    opts: ServeOptions, store_dir: Path, monitor: tuple[str, int]
) -> Callable[[str], str]:
    if opts.node is not None:
        node = opts.node
        if node.monitor_listen is None:
            node = NodeConfig(**{**node.__dict__, "monitor_listen": monitor})
        text = render_node_config(node)
        return lambda authorization: text + authorization
    lines = [
        "# nats-server configuration written by `membershipd serve` (mode 0600).",
        f"listen: {conf_string(_hostport(*opts.client_listen))}",
        f"http: {conf_string(_hostport(*monitor))}",
        "jetstream {",
        f"  store_dir: {conf_string(str(store_dir / 'jetstream'))}",
        "}",
    ]
    head = "\n".join(lines) + "\n"
    return lambda authorization: head + authorization


class _Users(Protocol):
    async def list_users(self) -> list[Any]: ...


class _Allowlist:
    """Keeps the managed server's authorization equal to the store's allowlist."""

    def __init__(
        self,
        store: _Users,
        server: ManagedServer | None,
        admins: tuple[str, ...],
        service_nkey: str,
        subject_prefix: str,
        notice: Callable[[str], None],
    ) -> None:
        self._store = store
        self._server = server
        self._admins = admins
        self._service = service_nkey
        self._prefix = subject_prefix
        self._notice = notice
        self._lock = asyncio.Lock()
        self._left_out: tuple[str, ...] = ()

    async def render(self) -> str:
        allowed = allowlist(await self._store.list_users(), self._admins, self._service)
        if allowed.left_out != self._left_out:
            for line in allowed.left_out:
                self._notice(f"membershipd: not let in: {line}")
            self._left_out = allowed.left_out
        return render_authorization(allowed, self._prefix)

    def bootstrap(self) -> str:
        """Before the store can be read (KV on the server itself): service and admins only."""
        return render_authorization(allowlist((), self._admins, self._service), self._prefix)

    async def refresh(self) -> None:
        if self._server is None:
            return
        async with self._lock:
            await self._server.reload(await self.render())


async def _watch(store: Store, allow: _Allowlist, stop: asyncio.Event) -> None:
    """Notice allowlist changes made by others (CLI on the file, another instance)."""
    last: Any = None
    while not stop.is_set():
        try:
            if isinstance(store, SQLiteStore):
                now: Any = store.connection.execute("PRAGMA data_version").fetchone()[0]
            else:
                assert isinstance(store, KVStore)
                state = await store.stream_state("users")
                now = None if state is None else (state.last_seq, state.messages)
            if last is not None and now != last:
                await allow.refresh()
            last = now
        except Exception as exc:  # keep watching: a lost server comes back, or serve stops
            allow._notice(f"membershipd: watching the allowlist: {exc}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)


async def _open_kv(
    nc: Client, opts: ServeOptions, notice: Callable[[str], None], stop: asyncio.Event
) -> KVStore | None:
    """The namespace, created with ``--replicas`` if missing.

    A node just started waits for the rest of its cluster (no JetStream until a meta
    leader is elected), for as long as it takes, saying so every few seconds; a single
    server gets :data:`KV_READY_TIMEOUT`. None if told to stop meanwhile.
    """
    started = time.monotonic()
    said = started
    while not stop.is_set():
        try:
            found = await KVStore(nc, opts.bucket_prefix, now_ms).bucket_replicas()
            missing = any(r is None for r in found.values())  # then made with --replicas
            return await KVStore.open(
                nc, opts.bucket_prefix, create=True, replicas=opts.replicas if missing else None
            )
        except (NatsUnavailableError, StoreError) as exc:
            now = time.monotonic()
            if opts.node is None and now - started > KV_READY_TIMEOUT:
                raise
            if now - said > 10:
                notice(f"membershipd: waiting for JetStream on the cluster: {exc}")
                said = now
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)
    return None


async def serve(
    opts: ServeOptions,
    *,
    ready: Callable[[dict[str, Any]], None],
    notice: Callable[[str], None],
    stop: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop``); then drain and shut down cleanly."""
    opts.check()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    identity = generate_user_keypair()  # the service's own, in memory only
    tmp: tempfile.TemporaryDirectory[str] | None = None
    server: ManagedServer | None = None
    sqlite: SQLiteStore | None = SQLiteStore.open(opts.db) if opts.db is not None else None
    nc: Client | None = None
    service: MembershipService | None = None
    try:
        if sqlite is not None:
            sqlite.require_current_schema()
        if opts.managed:
            if opts.node is not None:
                store_dir = opts.node.store_dir
            elif opts.store_dir is not None:
                store_dir = opts.store_dir.resolve()
            else:
                tmp = tempfile.TemporaryDirectory(prefix="membershipd-serve-")
                store_dir = Path(tmp.name)
            store_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            monitor = opts.monitor_listen or (opts.node.monitor_listen if opts.node else None)
            monitor = monitor or ("127.0.0.1", free_port())
            client = opts.node.client_listen if opts.node is not None else opts.client_listen
            if client[1] == 0:
                client = (
                    client[0],
                    free_port(client[0] if client[0] not in ("", "0.0.0.0") else "127.0.0.1"),
                )
                opts.client_listen = client
            server = ManagedServer(
                render=_base_config(opts, store_dir, monitor),
                config_path=store_dir / "membershipd-serve.conf",
                client=client,
                monitor=monitor,
                log_path=store_dir / "nats-server.log",
            )
            early = _Allowlist(
                sqlite or _NoUsers(),
                None,
                opts.admin_nkeys,
                identity.public,
                opts.subject_prefix,
                notice,
            )
            server.start(await early.render() if sqlite is not None else early.bootstrap())
            target = NatsTarget(server.url)
            nc = await connect_nats(target, name="membershipd serve", nkey_seed=identity.seed)
        else:
            assert opts.target is not None
            target = opts.target
            nc = await connect_nats(target, name="membershipd serve")
        opened = sqlite if sqlite is not None else await _open_kv(nc, opts, notice, stop)
        if opened is None:
            return  # stopped while waiting for the cluster
        store: Store = opened
        if isinstance(store, KVStore):
            store.require_current_schema()
        allow = _Allowlist(
            store, server, opts.admin_nkeys, identity.public, opts.subject_prefix, notice
        )
        await allow.refresh()  # KV on the node itself: now the users can come in
        service = MembershipService(
            nc,
            store,
            subject_prefix=opts.subject_prefix,
            store_kind="sqlite" if sqlite is not None else "kv",
            on_allowlist_change=allow.refresh if server is not None else None,
        )
        await service.start()
        watcher = asyncio.ensure_future(_watch(store, allow, stop)) if server else None
        ready(
            {
                "authorization": "managed" if server is not None else "the server's own",
                "monitor": server.monitor_url if server is not None else None,
                "service_id": service.id,
                "state": f"SQLite {opts.db}"
                if sqlite is not None
                else f"KV {opts.bucket_prefix!r}",
                "subject_prefix": opts.subject_prefix,
                "url": target.display(),
            }
        )
        died = asyncio.ensure_future(
            _server_died(server) if server is not None else _connection_lost(nc)
        )
        waiting = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([waiting, died], return_when=asyncio.FIRST_COMPLETED)
        for future in (waiting, died, watcher):
            if future is not None and not future.done():
                future.cancel()
        if died in done:
            if server is not None:
                raise FailedError(
                    f"the nats-server at {target.display()} stopped; its log: {server.log_path}"
                )
            raise NatsUnavailableError(
                f"lost the NATS server at {target.display()} for good (reconnecting failed); "
                "serve stops: restart it when the server is back"
            )
        notice("membershipd: stopping: answering the requests received, taking no new ones")
    finally:
        if service is not None:
            await service.stop()
        if nc is not None:
            await close_nats(nc, drain=True)
        if sqlite is not None:
            await sqlite.close()
        if server is not None:
            server.stop()
        if tmp is not None:
            tmp.cleanup()
    notice(f"membershipd: stopped after {service.handled if service else 0} request(s)")


async def _server_died(server: ManagedServer) -> None:
    proc = server.proc
    if proc is not None:
        await asyncio.to_thread(proc.wait)


async def _connection_lost(nc: Client) -> None:
    """Returns once the connection to an external server is closed for good (nats-py gave
    up reconnecting): serving on without it would answer nobody."""
    while not nc.is_closed:  # noqa: ASYNC110  (connect_nats owns the closed callback)
        await asyncio.sleep(WATCH_INTERVAL)


class _NoUsers:
    """Stands in for a store before one can be read: an empty allowlist."""

    async def list_users(self) -> list[Any]:
        return []
