"""The scenarios B1-B5 (see bench/README.md). Each runs against one server and returns figures.

Every scenario is bounded: a fixed amount of work under one overall deadline
(:data:`SCENARIO_DEADLINE`), and every connect or close under its own timeout.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import psutil

from bench.profiling import Profiler
from bench.servers import Server
from bench.wsclient import WSClient, client_frame

SCENARIO_DEADLINE = 110.0  # seconds, per scenario run against one server

COMPUTE = client_frame(b'{"action":"compute","data":3}')
COMPUTE_REPLY = b'{"result":9.0}'
PING = client_frame(b'{"action":"ping"}')
PONG = b'{"type":"pong"}'
CHAT = client_frame(b'{"inputs":{"input":"hi"}}')
_counter = itertools.count()


@dataclass
class Target:
    """One server, and how to address it (the echo app takes flowgate's URLs and ignores them)."""

    server: Server
    flow_id: str
    tokens: Callable[[int], list[str]]
    run_tag: str

    @property
    def name(self) -> str:
        return self.server.kind

    @property
    def port(self) -> int:
        return self.server.port

    def paths(self, n: int, feature: str | None) -> list[str]:
        """``n`` URLs, each with its own token and a chat_id never used before."""
        base = f"/api/v1/chat/{self.flow_id}" + (f"/{feature}" if feature else "")
        batch = next(_counter)
        return [
            f"{base}?t={token}&chat_id=b{self.run_tag}-{batch}-{i}"
            for i, token in enumerate(self.tokens(n))
        ]


@dataclass
class Window:
    """Wall time and CPU seconds of the server and of this load generator over a window."""

    wall: float = 0.0
    server_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    stores_cpu: float = 0.0  # PostgreSQL and Redis processes
    machine_cpu: float = 0.0  # every process of the machine

    def figures(self) -> dict[str, float]:
        wall = self.wall or 1e-9
        others = self.machine_cpu - self.server_cpu - self.loadgen_cpu - self.stores_cpu
        return {
            "wall_s": self.wall,
            "server_cpu_pct": 100.0 * self.server_cpu / wall,
            "loadgen_cpu_pct": 100.0 * self.loadgen_cpu / wall,
            "stores_cpu_pct": 100.0 * self.stores_cpu / wall,
            "other_cpu_pct": max(0.0, 100.0 * others / wall),
        }


_STORE_NAMES = ("postgres", "redis-server")


def _stores_cpu() -> dict[int, float]:
    seen = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        name = proc.info["name"] or ""
        times = proc.info["cpu_times"]
        if times is not None and name.startswith(_STORE_NAMES):
            seen[proc.pid] = times.user + times.system
    return seen


def _machine_cpu() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


@contextmanager
def measure(server: Server) -> Iterator[Window]:
    """The window that figures are taken over (and that ``--profile`` samples)."""
    window = Window()
    profiler = None
    if server.profile_to is not None:
        path = server.profile_to.with_name(f"{server.profile_to.stem}-{next(_counter)}.txt")
        profiler = Profiler(server.pid, path)
    stores0, machine0 = _stores_cpu(), _machine_cpu()
    cpu0, own0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
    try:
        yield window
    finally:
        window.wall = time.perf_counter() - t0
        window.server_cpu = server.cpu_seconds() - cpu0
        window.loadgen_cpu = time.process_time() - own0
        window.machine_cpu = _machine_cpu() - machine0
        stores1 = _stores_cpu()
        window.stores_cpu = sum(v - stores0.get(pid, 0.0) for pid, v in stores1.items())
        if profiler is not None:
            profiler.stop()
            server.profiles.append(profiler.output)


@dataclass
class Result:
    figures: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# -- helpers --------------------------------------------------------------------------------


async def _open_one(port: int, path: str, frame: bytes, reply: bytes) -> WSClient:
    client = await WSClient.connect(port, path, timeout=30)
    client.send(frame)
    got = await client.recv(timeout=30)
    if got != reply:
        client.abort()
        raise ConnectionError(f"unexpected first reply {got[:120]!r} (close {client.close_code})")
    return client


async def open_clients(
    target: Target, n: int, feature: str | None, frame: bytes, reply: bytes, concurrency: int
) -> tuple[list[WSClient], int]:
    """``n`` sockets, each answered once; those that failed are counted, not returned."""
    paths = target.paths(n, feature)
    clients: list[WSClient] = []
    errors = 0
    queue = iter(paths)

    async def worker() -> None:
        nonlocal errors
        for path in queue:
            try:
                clients.append(await _open_one(target.port, path, frame, reply))
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors += 1
                if errors <= 3:
                    print(f"    {target.name}: open failed: {exc}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return clients, errors


async def close_clients(clients: list[WSClient], graceful: bool = True) -> None:
    if not graceful:
        for client in clients:
            client.abort()
        return
    queue = iter(clients)

    async def worker() -> None:
        for client in queue:
            await client.close(timeout=5)

    await asyncio.gather(*(worker() for _ in range(64)))


async def _bounded(coro: Awaitable[Result]) -> Result:
    async with asyncio.timeout(SCENARIO_DEADLINE):
        return await coro


# -- B1: round trips ------------------------------------------------------------------------


async def b1_round_trips(
    target: Target, sockets: int = 50, requests: int = 400, rounds: int = 5
) -> Result:
    """``rounds`` times ``sockets`` x ``requests`` round trips, one in flight per socket (a
    single 50 x 400 round lasts only ~0.3 s here, too short to time steadily)."""
    clients, errors = await open_clients(target, sockets, "compute", COMPUTE, COMPUTE_REPLY, 8)
    result = Result(errors=errors)
    latencies: list[float] = []
    bad = 0

    async def run(client: WSClient, n: int, record: bool) -> None:
        nonlocal bad
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            client.send(COMPUTE)
            if await client.recv() != COMPUTE_REPLY:
                bad += 1
            if record:
                latencies.append(clock() - t0)

    try:
        await asyncio.gather(*(run(c, 20, False) for c in clients))  # warm-up
        with measure(target.server) as window:
            for _ in range(rounds):
                await asyncio.gather(*(run(c, requests, True) for c in clients))
    finally:
        await close_clients(clients)
    total = len(clients) * requests * rounds
    result.errors += bad
    result.figures = {
        "msgs_per_s": total / window.wall,
        "rtt_p50_us": 1e6 * percentile(latencies, 50),
        "rtt_p99_us": 1e6 * percentile(latencies, 99),
        **window.figures(),
    }
    return result


# -- B2: connection set-up ------------------------------------------------------------------


async def _connect_cycle(port: int, path: str) -> float:
    """Connect (JWT + admission on a chat_id), one compute reply, close; set-up seconds."""
    t0 = time.perf_counter()
    client = await WSClient.connect(port, path, timeout=30)
    try:
        client.send(COMPUTE)
        got = await client.recv(timeout=30)
        setup = time.perf_counter() - t0
        if got != COMPUTE_REPLY:
            raise ConnectionError(f"unexpected reply {got[:120]!r}")
    finally:
        await client.close(timeout=10)
    return setup


async def b2_connects(
    target: Target, connects: int = 2000, concurrency: int = 8, rate: float = 400.0,
    rate_connects: int = 2000,
) -> Result:
    result = Result()
    # Warm-up: imports, caches, the database's connection pool.
    await asyncio.gather(*(_connect_cycle(target.port, p) for p in target.paths(16, "compute")))

    paths = iter(target.paths(connects, "compute"))
    setups: list[float] = []

    async def worker() -> None:
        for path in paths:
            try:
                setups.append(await _connect_cycle(target.port, path))
            except (OSError, TimeoutError, ConnectionError) as exc:
                result.errors += 1
                if result.errors <= 3:
                    print(f"    {target.name}: connect failed: {exc}")

    with measure(target.server) as window:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.figures = {
        "connects_per_s": len(setups) / window.wall,
        "setup_p50_ms": 1e3 * percentile(setups, 50),
        "setup_p99_ms": 1e3 * percentile(setups, 99),
        **window.figures(),
    }

    # Open loop at a fixed rate: latency from the scheduled start, so a slow server shows.
    fixed_paths = target.paths(rate_connects, "compute")
    latencies: list[float] = []
    in_flight = asyncio.Semaphore(512)

    async def timed(path: str, scheduled: float) -> None:
        async with in_flight:
            try:
                await _connect_cycle(target.port, path)
                latencies.append(time.perf_counter() - scheduled)
            except (OSError, TimeoutError, ConnectionError):
                result.errors += 1

    tasks = []
    with measure(target.server) as fixed:
        start = time.perf_counter()
        for i, path in enumerate(fixed_paths):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(timed(path, scheduled)))
        await asyncio.gather(*tasks)
    result.figures |= {
        "fixed_rate_setup_p50_ms": 1e3 * percentile(latencies, 50),
        "fixed_rate_setup_p99_ms": 1e3 * percentile(latencies, 99),
        "fixed_rate_achieved_per_s": len(latencies) / fixed.wall,
        "fixed_rate_server_cpu_pct": 100.0 * fixed.server_cpu / fixed.wall,
        "fixed_rate_loadgen_cpu_pct": 100.0 * fixed.loadgen_cpu / fixed.wall,
    }
    return result


# -- B3: idle memory ------------------------------------------------------------------------


async def b3_idle_memory(target: Target, sockets: int = 5000, settle: float = 1.0) -> Result:
    """On a freshly started server: RSS growth per open chat socket, after one reply each."""
    server = target.server
    server.restart()
    warm, _ = await open_clients(target, 64, None, PING, PONG, 8)
    await close_clients(warm)
    await asyncio.sleep(settle)
    before = server.rss()
    with measure(server) as window:
        clients, errors = await open_clients(target, sockets, None, PING, PONG, 16)
    await asyncio.sleep(settle)
    after = server.rss()
    await close_clients(clients, graceful=False)
    opened = max(1, len(clients))
    return Result(
        errors=errors,
        figures={
            "kib_per_socket": (after - before) / opened / 1024,
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "open_per_s": opened / window.wall,
            **window.figures(),
        },
    )


# -- B4: idle CPU ---------------------------------------------------------------------------


async def b4_idle_cpu(target: Target, sockets: int = 2000, idle: float = 10.0) -> Result:
    clients, errors = await open_clients(target, sockets, None, PING, PONG, 16)
    try:
        await asyncio.sleep(1.0)
        with measure(target.server) as window:
            await asyncio.sleep(idle)
        alive = sum(1 for c in clients if c.close_code is None)
    finally:
        await close_clients(clients, graceful=False)
    figures = window.figures()
    return Result(
        errors=errors + (len(clients) - alive),
        figures={
            "idle_cpu_pct": figures["server_cpu_pct"],
            "idle_cpu_us_per_socket_s": 1e6 * window.server_cpu / window.wall / max(1, alive),
            **figures,
        },
    )


# -- B5: streaming --------------------------------------------------------------------------

_STREAM = b'{"type":"stream"'
_END = b'{"type":"end"'
_CLOSE = b'{"type":"close"'
_ERROR = b'{"type":"error"'


class _End(msgspec.Struct):
    message_id: int | None = None
    status: str | None = None


async def _turn(client: WSClient) -> tuple[float | None, int, int, bool]:
    """Send a chat message, read to ``close``: (time to first piece, pieces, frames, stored)."""
    t0 = time.perf_counter()
    client.send(CHAT)
    first: float | None = None
    pieces = frames = 0
    stored = False
    started = False
    while True:
        data = await client.recv()
        frames += 1
        if data.startswith(_ERROR) and not started:
            return None, 0, frames, False  # refused before it started: no end will come
        if data.startswith(_STREAM):
            started = True
            pieces += 1
            if first is None:
                first = time.perf_counter() - t0
        elif data.startswith(b'{"type":"start"'):
            started = True
        elif data.startswith(_END):
            end = msgspec.json.decode(data, type=_End)
            stored = end.message_id is not None and end.status == "complete"
        elif data.startswith(_CLOSE):
            return first, pieces, frames, stored


async def b5_streaming(target: Target, chats: int = 100, rounds: int = 3) -> Result:
    """``rounds`` times: 100 chats at once, each one turn (each chat's next turn in the next
    round); one round lasts well under a second, too short to time steadily."""
    result = Result()
    warm, _ = await open_clients(target, 1, None, PING, PONG, 1)
    await _turn(warm[0])  # compiles the graph, fills the caches
    await close_clients(warm)
    clients, result.errors = await open_clients(target, chats, None, PING, PONG, 8)
    try:
        turns = []
        with measure(target.server) as window:
            for _ in range(rounds):
                turns += await asyncio.gather(*(_turn(c) for c in clients))
    finally:
        await close_clients(clients)
    pieces = sum(t[1] for t in turns)
    frames = sum(t[2] for t in turns)
    firsts = [t[0] for t in turns if t[0] is not None]
    stored = sum(1 for t in turns if t[3])
    result.figures = {
        "stream_frames_per_s": pieces / window.wall,
        "frames_per_s": frames / window.wall,
        "pieces_per_turn": pieces / max(1, len(turns)),
        "ttfp_p50_ms": 1e3 * percentile(firsts, 50),
        "ttfp_p99_ms": 1e3 * percentile(firsts, 99),
        "persisted_turns_per_s": stored / window.wall,
        "turns_per_s": len(turns) / window.wall,
        "turns_not_persisted": float(len(turns) - stored),
        **window.figures(),
    }
    return result


SCENARIOS: dict[str, Callable[..., Awaitable[Result]]] = {
    "B1": b1_round_trips,
    "B2": b2_connects,
    "B3": b3_idle_memory,
    "B4": b4_idle_cpu,
    "B5": b5_streaming,
}


async def run_scenario(scenario: str, target: Target, **options: Any) -> Result:
    return await _bounded(SCENARIOS[scenario](target, **options))
