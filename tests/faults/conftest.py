"""Fault-injection harness: two flowgate processes on a private PostgreSQL cluster and a private
``redis-server`` (``tests/private_stores.py``) that the tests stop, restart and kill.

- ``private_redis``, ``private_postgres``, ``private_redis_cluster``: session-scoped stores of
  this run's own; a test may leave them down, the next ``deployment`` brings them back.
- ``deployment``: a fresh pair of servers A and B per test (same database, Redis, prefix and JWT
  secret), with short timings so that faults resolve quickly; ``deployment_factory(**settings)``
  for other settings. Every server process is stopped at the end of the test (SIGTERM, then
  SIGKILL) and its log printed, which pytest shows when the test failed.
- ``Recorder``: reads every frame a socket gets, in the background, with the time it came, so
  a test can trigger a fault after the n-th frame and then check the whole sequence.
- ``assert_turn``: the PROTOCOL 1.2 rules for the frames of one turn (each frame covers
  ``first_seq``..``seq``, the frames cover every position once, in order,
  types in order, one ``end`` with a known status whose message is what was streamed, never
  ``turn_failed`` followed by ``complete``).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests import private_stores
from tests.e2e.conftest import STARTUP_SECONDS, Server, make_server, wait_until_healthy
from tests.e2e.wsclient import opened
from tests.private_stores import PrivatePostgres, PrivateRedis

# The session's private stores, as fixtures of this package.
private_redis = private_stores.private_redis
private_postgres = private_stores.private_postgres
private_redis_cluster = private_stores.private_redis_cluster

#: Short timings for the servers under test, so a lapsed lease or a drain resolves fast.
TURN_LEASE = 2.0
SHUTDOWN_GRACE = 1.0
STORE_RETRY = 10.0
#: How long a turn may take to be finalised after its process died (PROTOCOL §6: "within the
#: lease time"; the bound leaves room for one renewal period and a loaded machine).
FINALISE_BOUND = TURN_LEASE * 3 + 2

#: The user of every fault test; each test has chats of its own (``new_chat()``).
OWNER = "faults"
_flows: dict[tuple[str, str], str] = {}

CHAT_TYPES = ("begin", "start", "stream", "end", "close")
END_STATUSES = {"complete", "stopped", "failed", "interrupted"}


def words(n: int, tag: str = "w") -> str:
    """``n`` distinct words: the scripted model streams them one piece each."""
    return " ".join(f"{tag}{i}" for i in range(n))


def new_chat() -> str:
    return f"f-{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------------------------------------
# Server processes


@dataclass
class FaultServer(Server):
    """A flowgate process that a test may kill (``kill9``) or terminate (``sigterm``)."""

    name: str = "server"

    @classmethod
    def make(cls, tmp: Path, name: str, **settings: str) -> FaultServer:
        base = make_server(tmp, **settings)
        return cls(port=base.port, env=base.env, workdir=base.workdir, name=name)

    def launch(self) -> None:
        """Like ``start()`` without the ``database upgrade`` CLI run (the deployment migrated
        the database once): a second faster per start, and safe to do in parallel."""
        log = self.log_path.open("ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "run", "--port", str(self.port)],
                env=self.env,
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        wait_until_healthy(self.process, self.http, self.name, self.log)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        """SIGKILL, and wait (bounded) until the process is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def sigterm(self) -> None:
        """SIGTERM without waiting: the server drains; ``wait_exit`` to wait for its end."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=SHUTDOWN_GRACE + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    async def status(self, path: str) -> int:
        """The HTTP status of ``GET path`` (0 when the server does not answer)."""
        try:
            async with httpx.AsyncClient(timeout=3) as client:
                return (await client.get(f"{self.http}{path}")).status_code
        except httpx.HTTPError:
            return 0

    def chat_url(self, flow: str, token: str, chat_id: str) -> str:
        return f"{self.ws}/api/v1/chat/{flow}?t={token}&chat_id={chat_id}"


def launch_all(*servers: FaultServer) -> None:
    """Start the servers in parallel threads (each start is ~1.5 s of Python imports)."""
    errors: list[BaseException] = []

    def run(server: FaultServer) -> None:
        try:
            server.launch()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=STARTUP_SECONDS + 10)
    if errors:
        raise errors[0]


@dataclass
class Deployment:
    """Two processes A and B of one deployment, on the private PostgreSQL and Redis."""

    a: FaultServer
    b: FaultServer
    redis: PrivateRedis
    postgres: PrivatePostgres

    def create_flow(self, graph: object) -> str:
        """An online flow of ``OWNER`` with ``graph``; one per graph in the session's database
        (each ``app flows create`` is a CLI process, seconds on a loaded machine)."""
        key = (self.postgres.name, json.dumps(graph, sort_keys=True))
        if key not in _flows:
            _flows[key] = self.a.create_flow(OWNER, graph)
        return _flows[key]

    def token(self) -> str:
        return self.a.token(OWNER)

    async def rows(self, chat_id: str) -> list[dict[str, Any]]:
        """The chat's persisted messages, oldest first, read from the database directly."""
        records = await self.postgres.query(
            "SELECT id, is_bot, category, message, status, turn_id, client_msg_id "
            "FROM chat_message WHERE chat_id = $1 ORDER BY id",
            chat_id,
        )
        return [dict(record) for record in records]


def _print_logs(servers: list[FaultServer]) -> None:
    for server in servers:
        print(f"----- {server.name} log ({server.log_path}) -----")
        print(server.log()[-6000:])


class Deployments:
    """Starts pairs on the private stores; ``close()`` stops every server it started (SIGTERM,
    then SIGKILL), prints its log and removes its directory."""

    def __init__(self, postgres: PrivatePostgres, redis: PrivateRedis, root: Path) -> None:
        self.postgres, self.redis, self.root = postgres, redis, root
        self.started: list[FaultServer] = []

    def make(self, **settings: str) -> Deployment:
        self.redis.start()
        self.postgres.ensure_running()
        config = {
            "database_url": self.postgres.url,
            "redis_url": self.redis.url,
            "redis_prefix": f"flowgate-fault:{uuid.uuid4().hex[:8]}:",
            "turn_lease": str(TURN_LEASE),
            "shutdown_grace": str(SHUTDOWN_GRACE),
            "store_retry": str(STORE_RETRY),
            "max_connections_per_user": "50",
            **settings,
        }
        index = len(self.started) // 2
        a = FaultServer.make(_mkdir(self.root / f"a{index}"), "A", **config)
        b = FaultServer.make(_mkdir(self.root / f"b{index}"), "B", **config)
        self.started.extend([a, b])
        launch_all(a, b)
        return Deployment(a=a, b=b, redis=self.redis, postgres=self.postgres)

    def heal(self, deployment: Deployment) -> None:
        """Before reusing a deployment: stores up, dead servers started again."""
        self.redis.start()
        self.postgres.ensure_running()
        launch_all(*(s for s in (deployment.a, deployment.b) if not s.alive))

    def close(self) -> None:
        for server in self.started:
            server.stop()
        _print_logs(self.started)  # pytest shows them when the test failed
        for server in self.started:
            shutil.rmtree(server.workdir, ignore_errors=True)
        # A test that failed with a store down leaves it down; the next ``make`` starts it.


@pytest.fixture
def deployment_factory(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    tmp_path: Path,
) -> Iterator[Callable[..., Deployment]]:
    """``make(**settings)``: a started pair of this test's own; settings are ``FLOWGATE_*``
    names in lower case (``store_retry="1"``)."""
    deployments = Deployments(private_postgres, private_redis, tmp_path)
    try:
        yield deployments.make
    finally:
        deployments.close()


@pytest.fixture
def deployment(deployment_factory: Callable[..., Deployment]) -> Deployment:
    """A fresh pair per test: a fault in one test cannot leak into the next."""
    return deployment_factory()


@pytest.fixture(scope="module")
def _module_deployments(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployments, Deployment]]:
    deployments = Deployments(private_postgres, private_redis, tmp_path_factory.mktemp("pair"))
    try:
        yield deployments, deployments.make()
    finally:
        deployments.close()


@pytest.fixture
def shared_deployment(_module_deployments: tuple[Deployments, Deployment]) -> Deployment:
    """One pair for the tests of a module that break no store and no process (each test uses
    chats of its own): two server starts saved per test."""
    deployments, deployment = _module_deployments
    deployments.heal(deployment)
    return deployment


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------
# Sockets


@dataclass
class Recorder:
    """Every frame a socket receives, read in the background, with its arrival time.

    While a recorder runs, nothing else may ``recv`` on its socket (sending is fine)."""

    socket: ClientConnection
    name: str
    frames: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    ended: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    started: float = field(default_factory=time.monotonic)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._task = asyncio.create_task(self._pump(), name=f"recorder-{self.name}")

    async def _pump(self) -> None:
        try:
            while True:
                raw = await self.socket.recv()
                self.frames.append(json.loads(raw))
                self.times.append(time.monotonic())
                await self._notify()
        except ConnectionClosed as closed:
            if closed.rcvd is not None:
                self.close_code, self.close_reason = closed.rcvd.code, closed.rcvd.reason
            else:
                self.close_code, self.close_reason = 1006, "no close frame"
        finally:
            self.ended = True
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[Recorder], bool], timeout: float) -> bool:
        """Whether ``predicate`` held within ``timeout`` seconds (or when the socket ended)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self) or self.ended)
        except TimeoutError:
            pass
        return predicate(self)

    async def expect(
        self, predicate: Callable[[Recorder], bool], timeout: float, what: str
    ) -> None:
        if not await self.wait(predicate, timeout):
            raise AssertionError(
                f"{self.name}: waited {timeout:.1f} s for {what}; got {self.summary()}"
            )

    async def finished(self, timeout: float) -> bool:
        """Wait for the turn's ``close`` frame (or the socket to end); whether it came."""
        return await self.wait(lambda r: r.count("close") > 0, timeout)

    async def socket_closed(self, timeout: float) -> bool:
        return await self.wait(lambda r: r.ended, timeout)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # --- what was seen

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("type") == type_]

    def count(self, type_: str) -> int:
        return len(self.of_type(type_))

    @property
    def chat(self) -> list[dict[str, Any]]:
        """The turn's frames: its chat frames and a ``turn_failed`` error, which is one of them
        (docs/protocol.md §5.1: it has the turn's ``turn_id`` and a ``seq``)."""
        return [
            f
            for f in self.frames
            if f.get("type") in CHAT_TYPES or (f.get("type") == "error" and f.get("turn_id"))
        ]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return self.of_type("error")

    def streamed(self) -> str:
        return "".join(f["message"] for f in self.of_type("stream"))

    def time_of(self, type_: str) -> float | None:
        for frame, at in zip(self.frames, self.times, strict=True):
            if frame.get("type") == type_:
                return at
        return None

    def summary(self) -> str:
        parts: list[str] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                parts.append(
                    f"stream{run[0]}..{run[-1]}({len(run)})" if len(run) > 1 else f"stream{run[0]}"
                )
                run.clear()

        for frame in self.frames:
            type_ = frame.get("type")
            mark = f"#{frame['seq']}" if "seq" in frame else ""
            if type_ == "stream":
                run.append(mark)
                continue
            flush()
            parts.append(
                f"{type_}{mark}"
                + (f"[{frame.get('code')}]" if type_ == "error" else "")
                + (f"[{frame.get('status')}]" if type_ == "end" else "")
            )
        flush()
        idle = time.monotonic() - (self.times[-1] if self.times else self.started)
        state = (
            f"socket closed {self.close_code} {self.close_reason!r}"
            if self.ended
            else f"socket open, nothing for {idle:.1f} s"
        )
        return f"{len(self.frames)} frames: {' '.join(parts) or '-'}; {state}"


async def record(socket: ClientConnection, name: str) -> Recorder:
    return Recorder(socket, name)


async def all_finished(*recorders: Recorder, timeout: float) -> None:
    """Wait (together, so the bounds do not add up) for each recorder's turn to close."""
    await asyncio.gather(*(r.finished(timeout) for r in recorders))


async def joined(*sockets: ClientConnection) -> None:
    """A pong means the connection is admitted and has joined its chat on the bus."""
    for socket in sockets:
        await socket.send(json.dumps({"action": "ping"}))
        async with asyncio.timeout(10):
            frame = json.loads(await socket.recv())
        assert frame == {"type": "pong"}, frame


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """Whether ``check`` became true within ``timeout`` seconds (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return True
        except Exception:  # a store coming back answers with every kind of error
            pass
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.2)


# --------------------------------------------------------------------------------------------
# PROTOCOL 1.2: the frames of one turn


def assert_turn(
    seen: Recorder,
    *,
    statuses: set[str] = END_STATUSES,
    from_seq: int = 0,
    streamed_before: str = "",
    reply: str | None = None,
) -> dict[str, Any]:
    """The chat frames ``seen`` got form one whole turn (or, with ``from_seq``, its tail):
    one ``turn_id``; every frame has ``seq`` and covers ``first_seq`` (if it has one: a
    joined ``stream``) to ``seq``, and the frames cover every position from ``from_seq``
    once, in order; ``seq`` 0 is ``begin``, 1 ``start``, then ``stream``s, ``end``,
    ``close`` last; ``end.status`` in ``statuses``; ``end.message`` is everything streamed
    (``streamed_before`` + this socket's pieces) and, if given and complete, ``reply``; never
    ``turn_failed`` then ``complete``.
    Returns the ``end`` frame."""
    where = f"{seen.name}: {seen.summary()}"
    chat = seen.chat
    assert chat, f"no chat frame at all. {where}"
    turn_ids = {f.get("turn_id") for f in chat}
    assert len(turn_ids) == 1 and None not in turn_ids, f"turn_ids {turn_ids}. {where}"
    unnumbered = [f["type"] for f in chat if not isinstance(f.get("seq"), int)]
    assert not unnumbered, f"chat frames without an integer seq: {unnumbered}. {where}"
    seqs = [p for f in chat for p in range(f.get("first_seq", f["seq"]), f["seq"] + 1)]
    joined = [f for f in chat if "first_seq" in f]
    assert all(f["type"] == "stream" and f["first_seq"] < f["seq"] for f in joined), (
        f"first_seq on a frame that is not a joined stream: {joined}. {where}"
    )
    duplicated = sorted({s for s in seqs if seqs.count(s) > 1})
    assert not duplicated, f"seq seen twice: {duplicated}. {where}"
    expected = list(range(from_seq, from_seq + len(seqs)))
    assert seqs == expected, (
        f"seq not contiguous from {from_seq}: missing {sorted(set(expected) - set(seqs))}, "
        f"order {seqs}. {where}"
    )
    assert chat[-1]["type"] == "close", f"the turn did not reach close. {where}"
    ends = [f for f in chat if f["type"] == "end"]
    assert len(ends) == 1, f"{len(ends)} end frames. {where}"
    last = chat[-1]["seq"]
    for frame in chat:
        seq = frame["seq"]
        want = (
            "begin"
            if seq == 0
            else "start"
            if seq == 1
            else "close"
            if seq == last
            else "end"
            if seq == last - 1
            else "stream"
        )
        if frame["type"] == "error":  # a turn_failed, right before end
            assert frame.get("code") == "turn_failed" and seq == last - 2, f"{frame}. {where}"
            continue
        if want == "stream" and seq == last - 2 and any(f["type"] == "error" for f in chat):
            want = "error"
        assert frame["type"] == want, f"seq {seq} is {frame['type']}, expected {want}. {where}"
    end = ends[0]
    assert end["status"] in statuses, f"end status {end['status']!r}, wanted {statuses}. {where}"
    failed = [e for e in seen.errors if e.get("code") == "turn_failed"]
    assert not (failed and end["status"] == "complete"), f"turn_failed then complete. {where}"
    streamed = streamed_before + seen.streamed()
    assert end["message"] == streamed, (
        f"end.message {end['message']!r} is not what was streamed {streamed!r}. {where}"
    )
    if reply is not None and end["status"] == "complete":
        assert end["message"] == reply, f"complete answer {end['message']!r} != {reply!r}"
    if reply is not None and end["status"] != "complete":
        assert reply.startswith(end["message"]), f"partial {end['message']!r} not a prefix"
    return end


def assert_answered_once(
    rows: list[dict[str, Any]], question: str, *, status: str, message: str | None = None
) -> dict[str, Any]:
    """``question`` is stored once, answered by exactly one bot row of its turn with ``status``
    (and ``message``); nothing else of that turn is stored. Returns the answer row."""
    shown = [(r["id"], r["is_bot"], r["status"], r["message"][:40]) for r in rows]
    questions = [r for r in rows if not r["is_bot"] and r["message"] == question]
    assert len(questions) == 1, f"question {question!r} stored {len(questions)} times: {shown}"
    turn = questions[0]["turn_id"]
    answers = [r for r in rows if r["is_bot"] and r["turn_id"] == turn]
    assert len(answers) == 1, f"{len(answers)} answers to {question!r}: {shown}"
    answer = answers[0]
    assert answer["id"] > questions[0]["id"], f"answer stored before its question: {shown}"
    assert answer["status"] == status, f"answer status {answer['status']!r} != {status!r}: {shown}"
    if message is not None:
        assert answer["message"] == message, f"stored {answer['message']!r} != {message!r}"
    return answer


async def history_of(url: str) -> list[dict[str, Any]]:
    """The chat's history (newest first, up to 100) read over a new socket at ``url``."""
    async with opened(url) as socket:
        await socket.send(json.dumps({"action": "history", "limit": 100}))
        async with asyncio.timeout(10):
            frame = json.loads(await socket.recv())
    assert frame.get("type") == "history", frame
    return frame["messages"]  # type: ignore[no-any-return]


async def refusal(url: str, within: float = 3.0) -> tuple[int, str] | None:
    """The close code and reason if the server closes a new socket at admission (without a
    frame) within ``within`` seconds; ``None`` if the socket was admitted (stayed open)."""
    async with opened(url) as socket:
        try:
            async with asyncio.timeout(within):
                frame = await socket.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason
        except TimeoutError:
            return None
    raise AssertionError(f"expected a close or nothing at admission, got a frame: {frame!r}")
