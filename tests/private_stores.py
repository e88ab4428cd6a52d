"""Private backing stores that a test may break on purpose: a ``redis-server`` of its own, a
PostgreSQL cluster of its own and a 3-master Redis Cluster, each on free 127.0.0.1 ports.

Nothing here touches the machine's shared PostgreSQL (5432) or Redis (6379). Each store can be
stopped, started again on the *same* port and restarted after a pause, which is how the fault
tests make Redis or the database go away under a running server. Every wait is bounded; every
process is killed and every directory removed at the end (fixture finaliser, and ``atexit`` as
a second net for a run interrupted with Ctrl-C). When the binaries are missing the tests are
skipped, or fail if ``CI`` is set (``tests/conftest.py``'s rule).

The fixtures are defined here so that any test package can use them; ``tests/faults/conftest.py``
re-exports them (``from tests.private_stores import private_redis_cluster`` in another
conftest does the same there).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.conftest import migrate

HOST = "127.0.0.1"
START_SECONDS = 20.0
STOP_SECONDS = 10.0
#: Private PostgreSQL clusters are named ``<prefix><pid of the test run>_<hex>``, so that a run
#: can drop what an earlier, killed run left behind without touching a live run's clusters.
PG_CLUSTER_PREFIX = "fgtest_"

_cleanups: list[Callable[[], None]] = []


def _run_cleanups_at_exit() -> None:
    while _cleanups:
        with contextlib.suppress(Exception):
            _cleanups.pop()()


atexit.register(_run_cleanups_at_exit)


def missing(message: str) -> NoReturn:
    """Skip locally, fail in CI: a skipped fault test in CI would be a silent hole."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_binaries(*names: str) -> None:
    absent = [name for name in names if shutil.which(name) is None]
    if absent:
        missing(f"not installed: {', '.join(absent)}")


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def free_cluster_port() -> int:
    """A port P with P and its cluster bus port P + 10000 both free."""
    for _ in range(200):
        port = random.randint(20000, 29999)
        if port_is_free(port) and port_is_free(port + 10000):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # a store coming up answers with every kind of error
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} within {timeout:.0f} s")
        time.sleep(interval)


def _terminate(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_SECONDS)


# --------------------------------------------------------------------------------------------
# redis-server


class PrivateRedis:
    """One ``redis-server`` on a fixed free port, nothing persisted (``--save "" --appendonly
    no``): a restart loses every key, as a real Redis restart without persistence does."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"redis-{self.port}.log"
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self) -> redis.Redis:
        """No retries: a test asking whether Redis is down wants the answer now."""
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_connect_timeout=1,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        finally:
            client.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        # The port was ours a moment ago; wait (bounded) for the old socket to be gone.
        wait_for(lambda: port_is_free(self.port), STOP_SECONDS, f"port {self.port} free")
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    HOST,
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "no",
                    *self.extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        finally:
            log.close()

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited: {self.log()}")
            return self.ping()

        try:
            wait_for(up, START_SECONDS, f"redis-server on port {self.port} answering PING")
        except AssertionError:
            raise
        except TimeoutError as error:
            raise AssertionError(f"{error}: {self.log()}") from None

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill``); returns once the process has exited."""
        if self.process is not None:
            _terminate(self.process, kill=kill)

    def restart(self, down_for: float = 1.5, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop(kill=True)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


# --------------------------------------------------------------------------------------------
# PostgreSQL, through Debian's postgresql-common


def _pg_version() -> str:
    root = Path("/etc/postgresql")
    versions = (
        sorted((entry.name for entry in root.iterdir() if entry.name.isdigit()), key=int)
        if root.is_dir()
        else []
    )
    if not versions:
        missing("no PostgreSQL version under /etc/postgresql")
    return versions[-1]


def _run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}"
        )
    return result


def _pg_clusters(version: str) -> list[str]:
    result = subprocess.run(
        ["pg_lsclusters", "--no-header", version], capture_output=True, text=True, timeout=30
    )
    return [line.split()[1] for line in result.stdout.splitlines() if len(line.split()) > 1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_stale_pg_clusters(version: str) -> None:
    """Drop private clusters whose test run is gone (killed before its finaliser ran)."""
    pattern = re.compile(rf"^{PG_CLUSTER_PREFIX}(\d+)_[0-9a-f]+$")
    for name in _pg_clusters(version):
        match = pattern.match(name)
        if match and not _pid_alive(int(match.group(1))):
            subprocess.run(
                ["pg_dropcluster", "--stop", version, name], capture_output=True, timeout=60
            )
            shutil.rmtree(f"/etc/postgresql/{version}/{name}", ignore_errors=True)


class PrivatePostgres:
    """A PostgreSQL cluster of its own (``pg_createcluster``), owned by and run as the
    ``postgres`` user (the server refuses to run as root), listening on 127.0.0.1 and its Unix
    socket in /var/run/postgresql only, trust auth, durability off (fsync, synchronous commit,
    full page writes: a test cluster is thrown away). ``drop()`` removes data, config and log.
    """

    database = "flowgate"
    user = "postgres"

    def __init__(self) -> None:
        self.version = _pg_version()
        self.name = f"{PG_CLUSTER_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.created = False

    @property
    def url(self) -> str:
        """For flowgate (SQLAlchemy + asyncpg)."""
        return f"postgresql+asyncpg://{self.user}@{HOST}:{self.port}/{self.database}"

    @property
    def dsn(self) -> str:
        """For asyncpg directly."""
        return f"postgresql://{self.user}@{HOST}:{self.port}/{self.database}"

    def _ctl(self, action: str, *args: str) -> None:
        _run("pg_ctlcluster", "--skip-systemctl-redirect", self.version, self.name, action, *args)

    def create(self) -> None:
        drop_stale_pg_clusters(self.version)
        self.created = True  # from here on, drop() cleans up whatever part of it exists
        _run(
            "pg_createcluster",
            self.version,
            self.name,
            "--port",
            str(self.port),
            "--start-conf",
            "manual",
            "--quiet",
            "-o",
            "fsync=off",
            "-o",
            "synchronous_commit=off",
            "-o",
            "full_page_writes=off",
            "--",
            "--auth=trust",
        )
        # pg_createcluster's -o cannot quote a value with dots; conf.d is included last.
        conf = Path(f"/etc/postgresql/{self.version}/{self.name}/conf.d/flowgate-tests.conf")
        conf.write_text("listen_addresses = '127.0.0.1'\n")
        self.start()
        asyncio.run(self._execute("postgres", f'CREATE DATABASE "{self.database}"'))

    async def _execute(self, database: str, statement: str) -> None:
        connection = await asyncpg.connect(
            host=HOST, port=self.port, user=self.user, database=database, timeout=3
        )
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def query(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Rows of ``sql`` on the test database, over a connection of its own (bounded)."""
        connection = await asyncpg.connect(self.dsn, timeout=3)
        try:
            return await connection.fetch(sql, *args, timeout=5)  # type: ignore[no-any-return]
        finally:
            await connection.close()

    def accepts(self) -> bool:
        """Sync (``asyncio.run``): not from inside a running event loop."""
        try:
            asyncio.run(self._execute(self.database if self.created else "postgres", "SELECT 1"))
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        return True

    @property
    def running(self) -> bool:
        result = subprocess.run(
            ["pg_lsclusters", "--no-header", self.version, self.name],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return " online " in f" {result.stdout} "

    def start(self) -> None:
        """Returns once the server accepts connections (``pg_ctlcluster`` waits for it)."""
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client and shuts down cleanly; ``immediate`` is a crash."""
        self._ctl("stop", "-m", mode)

    def restart(self, down_for: float = 1.5, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_for)
        self.start()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def drop(self) -> None:
        if self.created:
            subprocess.run(
                ["pg_dropcluster", "--stop", self.version, self.name],
                capture_output=True,
                timeout=60,
            )
            self.created = False
        # Our conf.d file keeps the config directory alive after pg_dropcluster.
        shutil.rmtree(f"/etc/postgresql/{self.version}/{self.name}", ignore_errors=True)

    def log(self) -> str:
        path = Path(f"/var/log/postgresql/postgresql-{self.version}-{self.name}.log")
        try:
            return path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def require_pg_cluster_tools() -> None:
    require_binaries("pg_createcluster", "pg_ctlcluster", "pg_dropcluster", "pg_lsclusters")
    if os.geteuid() != 0:
        missing("pg_createcluster for a cluster owned by postgres needs root")


# --------------------------------------------------------------------------------------------
# Redis Cluster


class PrivateRedisCluster:
    """Three masters (no replicas) on free loopback ports P, each with its bus port P + 10000,
    created with ``redis-cli --cluster create``; ready once every node says cluster_state:ok."""

    def __init__(self, workdir: Path, masters: int = 3) -> None:
        self.workdir = workdir
        self.nodes: list[PrivateRedis] = []
        for _ in range(masters):
            port = free_cluster_port()
            while any(node.port == port for node in self.nodes):
                port = free_cluster_port()
            node_dir = workdir / str(port)
            self.nodes.append(
                PrivateRedis(
                    node_dir,
                    port,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_dir / f"nodes-{port}.conf"),
                    "--cluster-node-timeout",
                    "2000",
                )
            )

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [f"redis://{HOST}:{port}" for port in self.ports]

    @property
    def url(self) -> str:
        """A start-up node's URL, for ``redis.cluster.RedisCluster.from_url``."""
        return self.urls[0]

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(HOST, port) for port in self.ports],
            socket_connect_timeout=1,
            socket_timeout=2,
        )

    def cluster_info(self, port: int) -> dict[str, str]:
        client = redis.Redis(
            host=HOST,
            port=port,
            socket_connect_timeout=1,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            raw = client.execute_command("CLUSTER INFO")
        finally:
            client.close()
        if isinstance(raw, dict):  # redis-py parses CLUSTER INFO
            return {str(k): str(v) for k, v in raw.items()}
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def state_ok(self) -> bool:
        return all(self.cluster_info(port).get("cluster_state") == "ok" for port in self.ports)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        _run(
            "redis-cli",
            "--cluster",
            "create",
            *(f"{HOST}:{port}" for port in self.ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
            timeout=60,
        )
        wait_for(self.state_ok, START_SECONDS, "Redis Cluster reporting cluster_state:ok", 0.1)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRedis]:
    """A ``redis-server`` of this test session's own; a test may stop or restart it (the next
    user of the fixture should call ``start()``, which does nothing when it runs)."""
    require_binaries("redis-server")
    workdir = tmp_path_factory.mktemp("private-redis")
    store = PrivateRedis(workdir)
    _cleanups.append(store.close)
    try:
        store.start()
        yield store
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this session's own with the database ``flowgate``, migrated;
    a test may stop or restart it (``ensure_running()`` brings it back)."""
    require_pg_cluster_tools()
    store = PrivatePostgres()
    _cleanups.append(store.drop)
    try:
        store.create()
        migrate(store.url)
        yield store
    finally:
        store.drop()


@pytest.fixture(scope="session")
def private_redis_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PrivateRedisCluster]:
    """A 3-master Redis Cluster of this session's own (``.url``, ``.urls``, ``.client()``)."""
    require_binaries("redis-server", "redis-cli")
    workdir = tmp_path_factory.mktemp("private-redis-cluster")
    cluster = PrivateRedisCluster(workdir)
    _cleanups.append(cluster.close)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)
