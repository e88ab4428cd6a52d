"""The scenarios B1-B6, B2R, B4H, STORM and CLI (see bench/README.md). Each runs against one
server and returns figures.

Every scenario is bounded: a fixed amount of work under one overall deadline
(:data:`SCENARIO_DEADLINE`), and every connect or close under its own timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
        return self.chat_paths(self.new_chats(n), feature)

    def new_chats(self, n: int) -> list[str]:
        """``n`` chat ids never used before."""
        batch = next(_counter)
        return [f"b{self.run_tag}-{batch}-{i}" for i in range(n)]

    def chat_paths(
        self,
        chats: list[str],
        feature: str | None,
        flow_id: str | None = None,
    ) -> list[str]:
        """A URL per chat, each with a new token. ``tokens`` gives the i-th token of every
        call to the same user (100 users, i % 100), so calling this again with the same list
        reconnects each chat as its owner."""
        base = f"/api/v1/chat/{flow_id or self.flow_id}" + (f"/{feature}" if feature else "")
        return [
            f"{base}?t={token}&chat_id={chat}"
            for chat, token in zip(chats, self.tokens(len(chats)), strict=True)
        ]


@dataclass
class Window:
    """Wall time and CPU seconds of the server and of this load generator over a window."""

    wall: float = 0.0
    server_cpu: float = 0.0
    loadgen_cpu: float = 0.0
    stores_cpu: float = 0.0  # PostgreSQL and Redis processes
    machine_cpu: float = 0.0  # every process of the machine, and the time the VM lost
    #: Time the hypervisor ran something else while this VM's cores wanted to run (``steal``):
    #: part of "other", counted apart so that a window's disturbance says where it came from.
    steal_cpu: float = 0.0

    def add(self, other: Window) -> None:
        for name in ("wall", "server_cpu", "loadgen_cpu", "stores_cpu", "machine_cpu", "steal_cpu"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def figures(self) -> dict[str, float]:
        wall = self.wall or 1e-9
        others = self.machine_cpu - self.server_cpu - self.loadgen_cpu - self.stores_cpu
        return {
            "wall_s": self.wall,
            "server_cpu_pct": 100.0 * self.server_cpu / wall,
            "loadgen_cpu_pct": 100.0 * self.loadgen_cpu / wall,
            "stores_cpu_pct": 100.0 * self.stores_cpu / wall,
            "other_cpu_pct": max(0.0, 100.0 * others / wall),
            "steal_cpu_pct": 100.0 * self.steal_cpu / wall,
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


def _machine_cpu() -> tuple[float, float]:
    """CPU seconds of the whole machine (the hypervisor's steal included), and the steal."""
    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    return t.user + t.nice + t.system + t.irq + t.softirq + steal, steal


@contextmanager
def profiled(server: Server) -> Iterator[None]:
    """``--profile``: py-spy samples the server for as long as this lasts (else nothing)."""
    if server.profile_to is None:
        yield
        return
    path = server.profile_to.with_name(f"{server.profile_to.stem}-{next(_counter)}.txt")
    profiler = Profiler(server.pid, path)
    try:
        yield
    finally:
        profiler.stop()
        server.profiles.append(profiler.output)


@contextmanager
def measure(server: Server, into: Window | None = None) -> Iterator[Window]:
    """The window that figures are taken over (and that ``--profile`` samples); with ``into``,
    a piece of a window measured in several pieces: added to ``into``, and not sampled (the
    scenario samples the whole, see :func:`profiled`)."""
    window = Window()
    with contextlib.nullcontext() if into is not None else profiled(server):
        stores0, (machine0, steal0) = _stores_cpu(), _machine_cpu()
        cpu0, own0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
        try:
            yield window
        finally:
            window.wall = time.perf_counter() - t0
            window.server_cpu = server.cpu_seconds() - cpu0
            window.loadgen_cpu = time.process_time() - own0
            machine1, steal1 = _machine_cpu()
            window.machine_cpu, window.steal_cpu = machine1 - machine0, steal1 - steal0
            stores1 = _stores_cpu()
            window.stores_cpu = sum(v - stores0.get(pid, 0.0) for pid, v in stores1.items())
            if into is not None:
                into.add(window)


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


async def b1_round_trips(target: Target, **options: Any) -> Result:
    """B1 against one server (``--profile``'s run): :func:`b1_round_trips_paired` of one."""
    return (await b1_round_trips_paired([target], **options))[0]


async def b1_round_trips_paired(
    targets: list[Target], sockets: int = 50, requests: int = 400, rounds: int = 15
) -> list[Result]:
    """``rounds`` times ``sockets`` x ``requests`` round trips, one in flight per socket, on
    each server, the servers' rounds interleaved (A B B A A B ...): both servers' sockets are
    open throughout, and a round on one follows a round on the other, so that a neighbour's
    burst of a few seconds falls on both rather than on one server's whole window. Until the
    fourteenth session each server ran its 15 rounds in one block of ~11 s, and one run's
    three repeats read 0.70-0.98 of the echo's on the same code. (A single 50 x 400 round
    lasts ~0.3-0.8 s here, too short to time steadily on its own.)"""
    results = [Result() for _ in targets]
    opened = []
    try:
        for target, result in zip(targets, results, strict=True):
            clients, result.errors = await open_clients(
                target, sockets, "compute", COMPUTE, COMPUTE_REPLY, 8
            )
            opened.append(clients)
        bad = [0 for _ in targets]
        latencies: list[list[float]] = [[] for _ in targets]

        async def run(client: WSClient, n: int, i: int, record: bool) -> None:
            clock = time.perf_counter
            for _ in range(n):
                t0 = clock()
                client.send(COMPUTE)
                if await client.recv() != COMPUTE_REPLY:
                    bad[i] += 1
                if record:
                    latencies[i].append(clock() - t0)

        for i, clients in enumerate(opened):  # warm-up
            await asyncio.gather(*(run(c, 20, i, False) for c in clients))
        windows = [Window() for _ in targets]
        order = list(range(len(targets)))
        with contextlib.ExitStack() as sampled:
            for target in targets:
                sampled.enter_context(profiled(target.server))
            for r in range(rounds):
                for i in order if r % 2 == 0 else order[::-1]:
                    with measure(targets[i].server, into=windows[i]):
                        await asyncio.gather(*(run(c, requests, i, True) for c in opened[i]))
    finally:
        for clients in opened:
            await close_clients(clients)
    for i, result in enumerate(results):
        result.errors += bad[i]
        result.figures = {
            "msgs_per_s": len(opened[i]) * requests * rounds / windows[i].wall,
            "rtt_p50_us": 1e6 * percentile(latencies[i], 50),
            "rtt_p99_us": 1e6 * percentile(latencies[i], 99),
            **windows[i].figures(),
        }
    return results


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


async def b2_connects(target: Target, **options: Any) -> Result:
    """B2 against one server (``--profile``'s run): :func:`b2_connects_paired` of one."""
    return (await b2_connects_paired([target], **options))[0]


async def b2_connects_paired(
    targets: list[Target],
    connects: int = 4000,
    concurrency: int = 8,
    rate: float = 400.0,
    rate_connects: int = 2000,
) -> list[Result]:
    """Connects to new chats: every connect claims a chat (one committed INSERT). 4000 in the
    closed half (2000 until the tenth session: the echo's window was 0.6-0.7 s here), on
    each server, their pieces interleaved (:func:`_connect_phases`)."""
    results = [Result() for _ in targets]
    for target in targets:  # warm-up: imports, caches, the database's connection pool
        await asyncio.gather(*(_connect_cycle(target.port, p) for p in target.paths(16, "compute")))
    await _connect_phases(
        targets,
        results,
        [target.paths(connects, "compute") for target in targets],
        [target.paths(rate_connects, "compute") for target in targets],
        concurrency,
        rate,
    )
    return results


#: B2's halves are timed in this many pieces per server, the servers' pieces alternating.
CLOSED_PIECES = 8
FIXED_PIECES = 4


async def _connect_phases(
    targets: list[Target],
    results: list[Result],
    closed_paths: list[list[str]],
    fixed_paths: list[list[str]],
    concurrency: int,
    rate: float,
) -> None:
    """B2's two halves (B2R's too) for each target: connect cycles ``concurrency`` at a time
    as fast as they go, then open-loop at a fixed ``rate``, latency counted from each cycle's
    scheduled start. Each half runs in pieces (``CLOSED_PIECES``, ``FIXED_PIECES``), the
    targets' pieces alternating (A B B A ...), so that a disturbance of a second or two
    falls on both servers: with each half in one block per server, one run's repeats of the
    fixed-rate p99 ratio read 1.30-2.57 on the same code (fourteenth session)."""
    order = list(range(len(targets)))

    def pieces(paths: list[str], n: int) -> list[list[str]]:
        size = -(-len(paths) // n)
        return [paths[k : k + size] for k in range(0, len(paths), size)]

    def failed(i: int, exc: Exception) -> None:
        results[i].errors += 1
        if results[i].errors <= 3:
            print(f"    {targets[i].name}: connect failed: {exc}")

    setups: list[list[float]] = [[] for _ in targets]
    windows = [Window() for _ in targets]

    async def closed_piece(i: int, paths: list[str]) -> None:
        queue = iter(paths)

        async def worker() -> None:
            for path in queue:
                try:
                    setups[i].append(await _connect_cycle(targets[i].port, path))
                except (OSError, TimeoutError, ConnectionError) as exc:
                    failed(i, exc)

        with measure(targets[i].server, into=windows[i]):
            await asyncio.gather(*(worker() for _ in range(concurrency)))

    # Open loop at a fixed rate: latency from the scheduled start, so a slow server shows.
    latencies: list[list[float]] = [[] for _ in targets]
    fixed_windows = [Window() for _ in targets]
    in_flight = asyncio.Semaphore(512)

    async def timed(i: int, path: str, scheduled: float) -> None:
        async with in_flight:
            try:
                await _connect_cycle(targets[i].port, path)
                latencies[i].append(time.perf_counter() - scheduled)
            except (OSError, TimeoutError, ConnectionError):
                results[i].errors += 1

    async def fixed_piece(i: int, paths: list[str]) -> None:
        tasks = []
        with measure(targets[i].server, into=fixed_windows[i]):
            start = time.perf_counter()
            for k, path in enumerate(paths):
                scheduled = start + k / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(timed(i, path, scheduled)))
            await asyncio.gather(*tasks)

    with contextlib.ExitStack() as sampled:
        for target in targets:
            sampled.enter_context(profiled(target.server))
        closed = [pieces(paths, CLOSED_PIECES) for paths in closed_paths]
        for r in range(CLOSED_PIECES):
            for i in order if r % 2 == 0 else order[::-1]:
                if r < len(closed[i]):
                    await closed_piece(i, closed[i][r])
        fixed = [pieces(paths, FIXED_PIECES) for paths in fixed_paths]
        for r in range(FIXED_PIECES):
            for i in order if r % 2 == 0 else order[::-1]:
                if r < len(fixed[i]):
                    await fixed_piece(i, fixed[i][r])

    for i, result in enumerate(results):
        window, fixed_window = windows[i], fixed_windows[i]
        result.figures |= {
            "connects_per_s": len(setups[i]) / window.wall,
            "setup_p50_ms": 1e3 * percentile(setups[i], 50),
            "setup_p99_ms": 1e3 * percentile(setups[i], 99),
            **window.figures(),
            "fixed_rate_setup_p50_ms": 1e3 * percentile(latencies[i], 50),
            "fixed_rate_setup_p99_ms": 1e3 * percentile(latencies[i], 99),
            "fixed_rate_achieved_per_s": len(latencies[i]) / fixed_window.wall,
            "fixed_rate_server_cpu_pct": 100.0 * fixed_window.server_cpu / fixed_window.wall,
            "fixed_rate_loadgen_cpu_pct": 100.0 * fixed_window.loadgen_cpu / fixed_window.wall,
        }


# -- B2R: reconnects to known chats on a fresh process --------------------------------------


async def _cycles(target: Target, paths: list[str], concurrency: int) -> int:
    """Connect cycles, not measured (seeding chats); how many failed."""
    queue = iter(paths)
    failed = 0

    async def worker() -> None:
        nonlocal failed
        for path in queue:
            try:
                await _connect_cycle(target.port, path)
            except (OSError, TimeoutError, ConnectionError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def b2r_reconnects(
    target: Target,
    connects: int = 3000,
    concurrency: int = 8,
    rate: float = 400.0,
    rate_connects: int = 1000,
    seed_concurrency: int = 32,
) -> Result:
    """B2's shape, but every connect is a reconnect to a chat that exists (the owner's user,
    a new token) on a process started after the chats were made: what a fleet of clients
    costs a freshly deployed process. Its in-process cache of owners is empty, so each first
    reconnect asks the database. 3000 in the closed half (1000 until the tenth session, when
    the echo's window had become 0.3 s on this machine), 1000 at the fixed rate: seeding the
    chats costs the server as much as the reconnects (2000 + 2000 once made a flowgate run
    last ~45 s, on a machine a third as fast)."""
    warm, closed, fixed = (target.new_chats(n) for n in (16, connects, rate_connects))
    # Seed: one connect cycle per chat with its owner's token (not measured). One call of
    # chat_paths per list, as below, so that each chat is reconnected by its owner.
    failed = 0
    for chats in (warm, closed, fixed):
        failed += await _cycles(target, target.chat_paths(chats, "compute"), seed_concurrency)
    # A freshly started process that has never seen these chats (the echo does the same).
    target.server.restart()
    result = Result(errors=failed)
    await _cycles(target, target.chat_paths(warm, "compute"), 8)  # warm-up, as B2's
    await _connect_phases(
        [target],
        [result],
        [target.chat_paths(closed, "compute")],
        [target.chat_paths(fixed, "compute")],
        concurrency,
        rate,
    )
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


#: B4's servers run with a ping interval far longer than the scenario (see
#: SCENARIO_ENV in bench/__main__.py): its idle window holds no heartbeat for either server.
NO_HEARTBEAT_INTERVAL = 3600.0


@contextmanager
def precise_cpu(server: Server) -> Iterator[list[float]]:
    """[wall s, server CPU s] over a window, the CPU from schedstat (ns, not 10 ms ticks)."""
    out = [0.0, 0.0]
    cpu0, t0 = server.cpu_seconds_precise(), time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - t0
        out[1] = server.cpu_seconds_precise() - cpu0


async def b4_idle_cpu(target: Target, sockets: int = 2000, idle: float = 10.0) -> Result:
    """Idle sockets, no heartbeats: the server runs with FLOWGATE_WS_PING_INTERVAL=3600 (both
    servers read it), so nothing but the server's own timers runs in the window."""
    clients, errors = await open_clients(target, sockets, None, PING, PONG, 16)
    try:
        await asyncio.sleep(1.0)
        pings0 = sum(c.pings for c in clients)
        with measure(target.server) as window, precise_cpu(target.server) as cpu:
            await asyncio.sleep(idle)
        pings = sum(c.pings for c in clients) - pings0
        alive = sum(1 for c in clients if c.close_code is None)
    finally:
        await close_clients(clients, graceful=False)
    wall, used = cpu
    figures = window.figures()
    return Result(
        errors=errors + (len(clients) - alive) + pings,  # a ping here would be a bug
        figures={
            "idle_cpu_pct": 100.0 * used / wall,
            "idle_cpu_us_per_socket_s": 1e6 * used / wall / max(1, alive),
            "pings_in_window": float(pings),
            **figures,
            "server_cpu_pct": 100.0 * used / wall,
        },
    )


async def b4h_heartbeats(
    target: Target, sockets: int = 2000, periods: int = 1, baseline: float = 8.0
) -> Result:
    """The cost of heartbeats at the default FLOWGATE_WS_PING_INTERVAL (20 s), apart from idle
    CPU. Sockets opened; then a ping-free baseline window (it ends before the first socket's
    first ping is due); then a window of exactly ``periods`` ping intervals, which holds
    ``periods`` pings of every socket whatever its phase (all were open before it began).
    Heartbeat cost = (CPU in that window - baseline rate x its length) / pings counted."""
    from app.infra.settings import load_settings

    interval = load_settings().ws_ping_interval  # the default: the bench does not set it
    first_open = time.perf_counter()
    clients, errors = await open_clients(target, sockets, None, PING, PONG, 16)
    try:
        await asyncio.sleep(0.5)
        # Baseline: until 1 s before the first socket's first ping, at most ``baseline`` s.
        length = min(baseline, first_open + interval - 1.0 - time.perf_counter())
        base_rate = float("nan")
        pings0 = sum(c.pings for c in clients)
        if length >= 2.0:
            with precise_cpu(target.server) as cpu:
                await asyncio.sleep(length)
            base_rate = cpu[1] / cpu[0]
        early = sum(c.pings for c in clients) - pings0  # should be 0
        pings0 = sum(c.pings for c in clients)
        with measure(target.server) as window, precise_cpu(target.server) as cpu:
            await asyncio.sleep(periods * interval)
        pings = sum(c.pings for c in clients) - pings0
        alive = sum(1 for c in clients if c.close_code is None)
    finally:
        await close_clients(clients, graceful=False)
    wall, used = cpu
    heartbeat_cpu = used - base_rate * wall
    return Result(
        errors=errors + (len(clients) - alive) + early,
        figures={
            "heartbeat_us_per_ping": 1e6 * heartbeat_cpu / max(1, pings),
            "heartbeat_cpu_pct": 100.0 * used / wall,
            "heartbeat_baseline_cpu_pct": 100.0 * base_rate,
            "pings_per_socket": pings / max(1, alive),
            "ping_interval_s": interval,
            **window.figures(),
            "server_cpu_pct": 100.0 * used / wall,
        },
    )


# -- B5: streaming --------------------------------------------------------------------------

_STREAM = b'{"type":"stream"'
_END = b'{"type":"end"'
_CLOSE = b'{"type":"close"'
_ERROR = b'{"type":"error"'


class _Seq(msgspec.Struct):
    type: str = ""
    turn_id: str | None = None
    seq: int | None = None
    first_seq: int | None = None


_decode_seq = msgspec.json.Decoder(_Seq).decode


def _pieces(data: bytes) -> int:
    """Pieces in a ``stream`` frame: one, or ``seq - first_seq + 1`` when the frame joins
    several (a frame covering positions first_seq..seq)."""
    if b'"first_seq":' not in data:
        return 1
    frame = _decode_seq(data)
    if frame.first_seq is None or frame.seq is None:
        return 1
    return frame.seq - frame.first_seq + 1


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
            pieces += _pieces(data)
            if first is None:
                first = time.perf_counter() - t0
        elif data.startswith(b'{"type":"start"'):
            started = True
        elif data.startswith(_END):
            end = msgspec.json.decode(data, type=_End)
            stored = end.message_id is not None and end.status == "complete"
        elif data.startswith(_CLOSE):
            return first, pieces, frames, stored


async def b5_streaming(target: Target, chats: int = 100, rounds: int = 8) -> Result:
    """``rounds`` times: 100 chats at once, each one turn (each chat's next turn in the next
    round); one round lasts well under a second, too short to time steadily. (Three rounds,
    until the thirteenth session, made flowgate's window about one second on this machine,
    and its repeats of one run read 0.35-0.60 of the echo's.)"""
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


# -- STORM: a reconnect storm after SIGTERM ---------------------------------------------------


async def storm_reconnects(
    target: Target,
    sockets: int = 2000,
    in_flight: int = 512,
    attempts: int = 20,
    open_concurrency: int = 16,
) -> Result:
    """``sockets`` chat sockets on server A (each its own chat, so each known to the backend);
    server B, a freshly started process on the same backend and another port, is started
    first (a load balancer about to move the traffic). SIGTERM to A: every socket is closed
    1012 and its client reconnects to B at once, up to ``in_flight`` connects in flight (a
    fleet of clients), retrying a refusal (refused handshake, close 1013/1012, reset) up to
    ``attempts`` times with a short backoff. Admitted = B answered ``ping`` with ``pong`` on
    the chat socket (the echo answers anything). Figure: seconds from SIGTERM until all are
    admitted. A then exits; B takes its place for the next scenarios."""
    a = target.server
    b = a.sibling(_log_beside(a, "storm"))
    b.start()
    try:
        chats = target.new_chats(sockets)
        opened, errors = await _open_paths(
            target, a.port, target.chat_paths(chats, None), open_concurrency
        )
        # Each socket reconnects to its own chat, with a new token of its owner (made now,
        # not inside the timed storm).
        again_all = target.chat_paths(chats, None)
        clients = [client for _, client in opened]
        again = [again_all[i] for i, _ in opened]
        await asyncio.sleep(1.0)
        in_flight_sem = asyncio.Semaphore(in_flight)
        codes: dict[int | None, int] = {}
        refused = 0
        failed = 0
        reconnect_s: list[float] = []
        admitted_at: list[float] = []
        closed_at: list[float] = []
        reconnected: list[WSClient] = []

        async def move(client: WSClient, path: str) -> None:
            nonlocal refused, failed
            code = await client.wait_closed(timeout=60)
            codes[code] = codes.get(code, 0) + 1
            closed = time.perf_counter()
            closed_at.append(closed)
            for attempt in range(attempts):
                async with in_flight_sem:
                    try:
                        reconnected.append(await _open_one(b.port, path, PING, PONG))
                        now = time.perf_counter()
                        admitted_at.append(now)
                        reconnect_s.append(now - closed)
                        return
                    except (OSError, TimeoutError, ConnectionError):
                        refused += 1
                # Backoff 50 ms doubling to 1 s, outside the in-flight limit.
                await asyncio.sleep(min(1.0, 0.05 * 2**attempt))
            failed += 1

        movers = [asyncio.create_task(move(c, p)) for c, p in zip(clients, again, strict=True)]
        # --profile: A's drain as well (it shares the servers' core with B), SIGTERM to exit.
        drain_profile = None
        if a.profile_to is not None:
            drain_profile = Profiler(
                a.pid, a.profile_to.with_name(f"{a.profile_to.stem}-drain-{next(_counter)}.txt")
            )
        with measure(b) as window:
            a_cpu = [a.cpu_seconds()]
            sigterm = time.perf_counter()
            a.sigterm()
            exited = asyncio.create_task(_exit_time(a, 60.0, a_cpu))
            await asyncio.gather(*movers)
        a_exit = await exited
        if drain_profile is not None:
            drain_profile.stop()
            a.profiles.append(drain_profile.output)
        await close_clients(reconnected, graceful=False)
        storm = (max(admitted_at) - sigterm) if len(admitted_at) == len(clients) else float("nan")
        result = Result(
            errors=errors + failed,
            figures={
                "storm_s": storm,
                "storm_reconnect_p50_ms": 1e3 * percentile(reconnect_s, 50),
                "storm_reconnect_p99_ms": 1e3 * percentile(reconnect_s, 99),
                # When A had closed its last socket, and when its process had exited.
                "storm_last_close_s": max(closed_at, default=float("nan")) - sigterm,
                "storm_a_exit_s": a_exit - sigterm if a_exit is not None else float("nan"),
                # A's CPU from SIGTERM to its exit: both processes share the servers' core.
                "storm_a_cpu_s": a_cpu[-1] - a_cpu[0],
                "storm_refused": float(refused),
                "storm_not_1012": float(sum(n for code, n in codes.items() if code != 1012)),
                "storm_admitted_per_s": len(admitted_at)
                / max(1e-9, max(admitted_at, default=sigterm) - sigterm),
                **window.figures(),
            },
        )
        if any(code != 1012 for code in codes):
            print(f"    {target.name}: close codes at SIGTERM {codes}")
        return result
    finally:
        # A has exited (or is killed now); B becomes the target's server.
        a.adopt(b)


def _log_beside(server: Server, what: str) -> Path:
    """A new log file for a second process of ``server``'s (named after the first one's
    log, which is a storm's log once a storm has replaced the process)."""
    stem = server.log_path.stem.split("-storm")[0].split("-b6")[0]
    return server.log_path.with_name(f"{stem}-{what}{next(_counter)}.log")


async def _exit_time(server: Server, timeout: float, cpu: list[float]) -> float | None:
    """When the server's process was seen to have exited (polled every 10 ms, bounded);
    ``cpu`` gets the last CPU seconds read while it still ran (its drain shares the core)."""
    deadline = time.perf_counter() + timeout
    while server.proc is not None and time.perf_counter() < deadline:
        with contextlib.suppress(psutil.Error, AssertionError):
            cpu.append(server.cpu_seconds())
        if server.proc.poll() is not None:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    return None


async def _open_paths(
    target: Target,
    port: int,
    paths: list[str],
    concurrency: int,
) -> tuple[list[tuple[int, WSClient]], int]:
    """Chat sockets on ``port``, one ``ping`` answered each: (index of its path, socket) for
    those opened, and how many failed."""
    clients: list[tuple[int, WSClient]] = []
    errors = 0
    queue = iter(enumerate(paths))

    async def worker() -> None:
        nonlocal errors
        for i, path in queue:
            try:
                clients.append((i, await _open_one(port, path, PING, PONG)))
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors += 1
                if errors <= 3:
                    print(f"    {target.name}: open failed: {exc}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return clients, errors


# -- B6: two processes, one chat socket on each -------------------------------------------------

#: B6's model: 5 ms before each of the 200 pieces, about an LLM's speed (200 pieces/s per
#: turn), so that C concurrent chats are a known load (~C x 200 pieces/s) below saturation.
B6_PIECE_DELAY = 0.005


class StampedClient(WSClient):
    """A client that keeps each message's arrival time (taken in ``data_received``, when the
    bytes reach the load generator, not when a task gets round to reading them)."""

    __slots__ = ("last_stamp", "stamps")

    def __init__(self) -> None:
        super().__init__()
        self.stamps: collections.deque[float] = collections.deque()
        self.last_stamp = 0.0

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        before = len(self._messages)
        super().data_received(data)
        self.stamps.extend(itertools.repeat(now, len(self._messages) - before))

    async def recv(self, timeout: float | None = None) -> bytes:
        data = await super().recv(timeout)
        self.last_stamp = self.stamps.popleft()
        return data


def _record(data: bytes, at: float, seen: dict[tuple[str, int], float]) -> _Seq:
    """Arrival time of each piece position a ``stream`` frame covers (first_seq..seq)."""
    frame = _decode_seq(data)
    if frame.type == "stream" and frame.seq is not None and frame.turn_id is not None:
        first = frame.first_seq if frame.first_seq is not None else frame.seq
        for pos in range(first, frame.seq + 1):
            seen[(frame.turn_id, pos)] = at
    return frame


async def _stamped_pair(
    a_port: int,
    b_port: int,
    path_a: str,
    path_b: str,
) -> tuple[StampedClient, StampedClient]:
    pair = []
    for port, path in ((a_port, path_a), (b_port, path_b)):  # A first: it claims the chat
        client = await StampedClient.connect(port, path, timeout=30)
        client.send(PING)
        if await client.recv(timeout=30) != PONG:
            client.abort()
            raise ConnectionError(f"no pong on port {port} (close {client.close_code})")
        pair.append(client)
    return pair[0], pair[1]


async def _b6_load(
    target: Target,
    b: Server,
    flow_id: str,
    chats: int,
    turns: int,
) -> tuple[dict[str, float], int]:
    a = target.server
    ids = target.new_chats(chats)
    paths_a, paths_b = target.chat_paths(ids, None, flow_id), target.chat_paths(ids, None, flow_id)
    pairs: list[tuple[StampedClient, StampedClient]] = []
    errors = 0
    queue = iter(zip(paths_a, paths_b, strict=True))

    async def opener() -> None:
        nonlocal errors
        for pa, pb in queue:
            try:
                pairs.append(await _stamped_pair(a.port, b.port, pa, pb))
            except (OSError, TimeoutError, ConnectionError) as exc:
                errors += 1
                if errors <= 3:
                    print(f"    B6: open failed: {exc}")

    await asyncio.gather(*(opener() for _ in range(8)))
    on_a: dict[tuple[str, int], float] = {}
    on_b: dict[tuple[str, int], float] = {}
    b_frames = 0
    refused = 0

    async def sender(client: StampedClient) -> None:
        nonlocal refused
        for _ in range(turns):
            client.send(CHAT)
            started = False
            while True:  # to this turn's close (bounded by the scenario deadline)
                data = await client.recv()
                frame = _record(data, client.last_stamp, on_a)
                if frame.type in ("begin", "start"):
                    started = True
                elif frame.type == "error" and not started:
                    refused += 1  # e.g. busy: this turn did not start
                    break
                elif frame.type == "close":
                    break

    async def watcher(client: StampedClient) -> None:
        nonlocal b_frames
        closes = 0
        while closes < turns:
            data = await client.recv()
            b_frames += 1
            if _record(data, client.last_stamp, on_b).type == "close":
                closes += 1

    watchers = [asyncio.create_task(watcher(cb)) for _, cb in pairs]
    try:
        with measure(a) as window:
            await asyncio.gather(*(sender(ca) for ca, _ in pairs))
            # B's copies of the last pieces: at most 10 s more.
            late = (await asyncio.wait(watchers, timeout=10.0))[1] if watchers else set()
    finally:
        for task in watchers:
            task.cancel()
        await close_clients([c for pair in pairs for c in pair], graceful=False)
    delays = [on_b[key] - at for key, at in on_a.items() if key in on_b]
    missing = sum(1 for key in on_a if key not in on_b)
    return {
        "pieces_per_s_on_b": sum(1 for key in on_b) / window.wall,
        "frames_per_s_on_b": b_frames / window.wall,
        "delay_p50_ms": 1e3 * percentile(delays, 50),
        "delay_p99_ms": 1e3 * percentile(delays, 99),
        "delay_max_ms": 1e3 * max(delays, default=float("nan")),
        "pieces_missing_on_b": float(missing),
        "turns_refused": float(refused),
        "chats": float(len(pairs)),
        **window.figures(),
    }, errors + missing + refused + len(late)


async def b6_cross_process(
    target: Target,
    loads: tuple[int, ...] = (10, 30),
    turns: int = 3,
    delay: float = B6_PIECE_DELAY,
) -> Result:
    """Two flowgate processes on the same PostgreSQL + Redis: A = the target's server (on the
    servers' core), B = a second process started here on the load generator's core. For each
    of C chats a socket on A sends the turns (one after another) and a socket of the same chat
    on B watches. Delay = arrival on B - arrival on A of each piece (same client clock): how
    far the other process's copy trails the local one. ``loads``: C for each level; figures of
    the first level are prefixed ``lo_``, of the second ``hi_``."""
    from bench import servers as servers_mod

    a = target.server
    flow_id = servers_mod.create_flow(
        a.env | a.extra_env, a.log_path.with_name("graph-b6.json"), "bench-b6", delay
    )
    b = a.sibling(
        _log_beside(a, "b6"),
        pin=frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    )
    b.start()
    result = Result()
    try:
        # Warm-up: one turn seen on both processes (graph compiled, pools and channels open).
        await _b6_load(target, b, flow_id, 2, 1)
        for prefix, chats in zip(("lo_", "hi_"), loads, strict=False):
            figures, errors = await _b6_load(target, b, flow_id, chats, turns)
            result.errors += errors
            result.figures |= {prefix + k: v for k, v in figures.items()}
            if prefix == "lo_":  # the window columns of the table: the target's load
                result.figures |= {k: v for k, v in figures.items() if k.endswith("_cpu_pct")}
    finally:
        b.stop()
    return result


# -- CLI: start-up of the command line --------------------------------------------------------


async def cli_startup(target: Target, runs: int = 7) -> Result:
    """``python -m app --help`` and ``python -m app flows list`` (with the backend's env) as
    processes, pinned to the servers' core (idle at that moment), ``runs`` timed runs each
    after one untimed one; min and median wall seconds."""
    import subprocess
    import sys

    from bench.servers import ROOT

    server = target.server
    env = server.env | server.extra_env
    pin = server.pin
    result = Result()

    def once(args: list[str]) -> float:
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=60,
            check=False,
            preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None,
        )
        took = time.perf_counter() - t0
        if done.returncode != 0:
            result.errors += 1
            print(f"    app {' '.join(args)} failed: {done.stderr[-300:]!r}")
        return took

    for name, args in (("help", ["--help"]), ("flows_list", ["flows", "list"])):
        await asyncio.to_thread(once, args)  # untimed: page cache, bytecode
        times = [await asyncio.to_thread(once, args) for _ in range(runs)]
        result.figures |= {
            f"cli_{name}_min_s": min(times),
            f"cli_{name}_median_s": statistics.median(times),
        }
    return result


SCENARIOS: dict[str, Callable[..., Awaitable[Result]]] = {
    "B1": b1_round_trips,
    "B2": b2_connects,
    "B2R": b2r_reconnects,
    "B3": b3_idle_memory,
    "B4": b4_idle_cpu,
    "B4H": b4h_heartbeats,
    "B5": b5_streaming,
    "STORM": storm_reconnects,
    "B6": b6_cross_process,
    "CLI": cli_startup,
}
#: Scenarios measured on flowgate alone (no echo pair): B6 needs two flowgate processes on one
#: backend; the echo has no command line.
SOLO = {"B6", "CLI"}


#: Scenarios that measure flowgate and the echo in one run, their pieces interleaved (the
#: deadline then covers both servers).
PAIRED: dict[str, Callable[..., Awaitable[list[Result]]]] = {
    "B1": b1_round_trips_paired,
    "B2": b2_connects_paired,
}


async def run_scenario(scenario: str, target: Target, **options: Any) -> Result:
    return await _bounded(SCENARIOS[scenario](target, **options))


async def run_paired(scenario: str, targets: list[Target], **options: Any) -> list[Result]:
    async with asyncio.timeout(SCENARIO_DEADLINE * len(targets)):
        return await PAIRED[scenario](targets, **options)
