"""The servers under test, their backends, CPU pinning and resource readings.

flowgate runs exactly as documented (``python -m app run``, after ``app database upgrade``); the
echo app runs under the same uvicorn settings (:mod:`bench.echo_server`). Each server process is
pinned to the last core, the load generator (this process) to the others, where the OS allows.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.graph import graph

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


# -- machine -------------------------------------------------------------------------------


def raise_fd_limit(wanted: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Pinning:
    server: frozenset[int] | None
    loadgen: frozenset[int] | None

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (sched_setaffinity unavailable or a single core)"
        loadgen = sorted(self.loadgen or ())
        return f"server on core(s) {sorted(self.server)}, load generator on {loadgen}"


def plan_pinning() -> Pinning:
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(None, None)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return Pinning(None, None)
    server, loadgen = frozenset(cores[-1:]), frozenset(cores[:-1])
    os.sched_setaffinity(0, loadgen)
    return Pinning(server, loadgen)


def compile_bytecode() -> None:
    """Bytecode for flowgate and the packages it runs on, as a deployed image holds it
    (``make install`` compiles ``src`` alone). The servers and CLI processes run with
    ``PYTHONDONTWRITEBYTECODE=1`` (as on CI machines), so none of them writes it: without this,
    a fresh clone's every process compiled each module it imported, and ``app flows list``
    took 1.6-1.9 s instead of 0.7. A second run only compares file times (under a second)."""
    import compileall
    import sysconfig

    for path in (ROOT / "src", Path(sysconfig.get_paths()["purelib"])):
        compileall.compile_dir(path, quiet=2, workers=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- backends -------------------------------------------------------------------------------


@dataclass
class Backend:
    """Where flowgate keeps its state for one phase of the run; ``env`` configures it."""

    name: str  # "embedded" | "pg"
    env: dict[str, str]
    describe: str
    _cleanup: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def create(cls, name: str, run_id: str, workdir: Path) -> Backend:
        var = workdir / f"var-{name}"
        var.mkdir(parents=True, exist_ok=True)
        env = {"FLOWGATE_VAR_DIR": str(var)}
        if name == "embedded":
            return cls(name, env, f"SQLite ({var}/flowgate.db), embedded build store, no Redis")
        if name != "pg":
            raise ValueError(f"unknown backend {name!r}")
        database = f"flowgate_bench_{run_id}"
        _pg_admin(f'CREATE DATABASE "{database}"')
        prefix = f"flowgate-bench-{run_id}:"
        env |= {
            "FLOWGATE_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
            "FLOWGATE_REDIS_URL": REDIS_URL,
            "FLOWGATE_REDIS_PREFIX": prefix,
        }
        backend = cls(name, env, f"PostgreSQL (database {database}) + Redis (prefix {prefix})")
        backend._cleanup = [("pg", database), ("redis", prefix)]
        return backend

    def drop(self) -> None:
        for kind, what in self._cleanup:
            try:
                if kind == "pg":
                    _pg_admin(f'DROP DATABASE IF EXISTS "{what}" WITH (FORCE)')
                else:
                    _redis_delete_prefix(what)
            except Exception as exc:  # cleaning up: say so and go on
                print(f"warning: could not drop {kind} {what}: {exc}", file=sys.stderr)
        self._cleanup = []


def _pg_admin(statement: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def _redis_delete_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=10)
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(batch), 1000):
            client.delete(*batch[i : i + 1000])
    finally:
        client.close()


def services_up() -> tuple[bool, str]:
    """Whether PostgreSQL and Redis answer; ``bash .ci/services`` starts them."""
    try:
        _pg_admin("SELECT 1")
    except Exception as exc:
        return False, f"PostgreSQL at 127.0.0.1:5432 does not answer ({exc})"
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_timeout=3).ping()
    except Exception as exc:
        return False, f"Redis at 127.0.0.1:6379 does not answer ({exc})"
    return True, ""


# -- processes ------------------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``python -m app ...`` with ``env``; its stdout, or an error with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"app {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def prepare_flowgate(env: dict[str, str], workdir: Path) -> str:
    """Migrate the backend and create the benchmark's online flow; its id."""
    run_cli(env, "database", "upgrade", "--no-prompt")
    return create_flow(env, workdir / "graph.json", "bench")


def create_flow(env: dict[str, str], graph_file: Path, name: str, delay: float = 0) -> str:
    """An online flow of :func:`bench.graph.graph` (``delay`` s before each piece); its id."""
    graph_file.write_text(json.dumps(graph(delay)))
    out = run_cli(
        env,
        "flows",
        "create",
        "--name",
        name,
        "--owner",
        "bench-owner",
        "--graph",
        str(graph_file),
        "--online",
    )
    return out.splitlines()[-1].strip()


@dataclass
class Server:
    """A server subprocess: flowgate (``python -m app run``) or the bare echo app."""

    kind: str  # "flowgate" | "echo"
    env: dict[str, str]
    ws: str
    pin: frozenset[int] | None
    log_path: Path
    port: int = 0
    #: Settings of this process on top of ``env`` (a scenario's, e.g. B4's ping interval).
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    #: With ``--profile``: py-spy samples each measured window into files named after this.
    profile_to: Path | None = None
    profiles: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def label(self) -> str:
        return self.kind

    def command(self) -> list[str]:
        if self.kind == "flowgate":
            return [
                sys.executable,
                "-m",
                "app",
                "run",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ws",
                self.ws,
            ]
        return [
            sys.executable,
            "-m",
            "bench.echo_server",
            "--port",
            str(self.port),
            "--ws",
            self.ws,
        ]

    def start(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        pin = self.pin
        preexec = (lambda: os.sched_setaffinity(0, pin)) if pin else None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            env=self.env | self.extra_env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
            start_new_session=True,
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start; see {self.log_path}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen within {timeout:g} s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.proc = None
        self.ps = None

    def restart(self, extra_env: dict[str, str] | None = None) -> None:
        if extra_env is not None:
            self.extra_env = dict(extra_env)
        self.stop()
        self.start()

    def ensure_env(self, extra_env: dict[str, str]) -> None:
        """Restart with ``extra_env`` unless the running process already has it."""
        if self.proc is None or extra_env != self.extra_env:
            self.restart(extra_env)

    def sibling(self, log_path: Path, pin: frozenset[int] | None = None) -> Server:
        """Another (not yet started) process of the same kind and settings: the second
        process of B6, or the one a reconnect storm moves to."""
        return Server(
            self.kind,
            self.env,
            self.ws,
            pin if pin is not None else self.pin,
            log_path,
            extra_env=dict(self.extra_env),
        )

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def adopt(self, other: Server) -> None:
        """Become ``other``'s process (after a storm moved the traffic there): this one must
        have exited. Saves starting a third process."""
        self.stop()
        self.proc, self.ps, self.port, self.log_path = (
            other.proc,
            other.ps,
            other.port,
            other.log_path,
        )
        self.extra_env = other.extra_env
        other.proc = other.ps = None

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.kind} exited with status {self.proc.returncode}; see {self.log_path}"
            )

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return t.user + t.system

    def cpu_seconds_precise(self) -> float:
        """CPU time of the live threads from /proc/<pid>/task/*/schedstat (nanoseconds), where
        ``cpu_seconds`` counts 10 ms clock ticks: an idle window of a few seconds at ~0.3 % of
        a core is only a few ticks. Threads that exit during a window are lost, so this is
        used only where the server starts no threads (B4); psutil's figure elsewhere."""
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.pid}/task")
            for tid in tasks:
                with (
                    contextlib.suppress(OSError),
                    open(f"/proc/{self.pid}/task/{tid}/schedstat") as f,
                ):
                    total += int(f.read().split()[0])
        except OSError:
            return self.cpu_seconds()
        return total / 1e9

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)


def base_env(ws_impl: str, secret: str) -> dict[str, str]:
    """The environment both servers run with: same limits, heartbeats and log level."""
    env = dict(os.environ)
    for key in list(env):
        if key.startswith("FLOWGATE_"):
            del env[key]
    env |= {
        "FLOWGATE_JWT_SECRET": secret,
        # Many sockets per user and far more than 20 frames/s per socket: see README.
        "FLOWGATE_MAX_CONNECTIONS_PER_USER": "100000",
        "FLOWGATE_MESSAGES_PER_SECOND": "1000000",
        "FLOWGATE_LOG_LEVEL": os.environ.get("BENCH_SERVER_LOG_LEVEL", "WARNING"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env["BENCH_WS"] = ws_impl
    return env


def new_secret() -> str:
    return secrets.token_urlsafe(48)


def make_workdir(results: Path, run_id: str) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"flowgate-bench-{run_id}-"))


def remove_workdir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
