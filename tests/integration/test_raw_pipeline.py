"""The raw pipeline (app.infra.redis.raw_pipeline) against the real server: the replies are
redis-py's pipeline's, an error reply fails its batch and leaves the connection in step, a
connection the server closed is replaced, and a batch cut short (a timeout, a cancellation)
never lets a later batch read its replies."""

from __future__ import annotations

import asyncio
from typing import Any

import hiredis
import pytest
from redis.exceptions import DataError, InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.infra.redis.client import make_redis
from app.infra.redis.raw_pipeline import _NOT_ENOUGH_DATA, RawPipeline, _Batch, _Replies, pack

CALL_TIMEOUT = 10.0


def test_pack_writes_resp_arrays_of_bulk_strings() -> None:
    assert pack([("SET", "k", b"v\r\n", 7, 0.5), ("GET", "ключ")]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n7\r\n$3\r\n0.5\r\n"
        b"*2\r\n$3\r\nGET\r\n$8\r\n" + "ключ".encode() + b"\r\n"
    )


@pytest.mark.parametrize("bad", [None, True, object()])
def test_pack_refuses_what_redis_py_refuses(bad: object) -> None:
    with pytest.raises(DataError):
        pack([("SET", "k", bad)])


async def test_replies_are_those_of_redis_pys_pipeline(redis_url: str, redis_prefix: str) -> None:
    client = make_redis(redis_url)
    raw = RawPipeline(client)
    key = f"{redis_prefix}raw"
    commands = [
        ("SET", f"{key}:s", b"\x00\xffbytes", "EX", 60),
        ("GETEX", f"{key}:s", "EX", 120),
        ("GET", f"{key}:missing"),
        ("INCRBYFLOAT", f"{key}:f", 1.25),
        ("ZADD", f"{key}:z", 1, "a", 2, "b"),
        ("ZRANGE", f"{key}:z", 0, -1),
        ("EVAL", "return {KEYS[1], tonumber(ARGV[1]) + 1}", 1, f"{key}:k", 41),
        ("DEL", f"{key}:s", f"{key}:f", f"{key}:z"),
    ]
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            mine = await raw.execute(commands)
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                # redis-py's response callbacks turn some replies into Python values (SET's
                # OK into True): compare with the raw replies, which the batch's callers read.
                theirs = await pipe.execute()
        assert mine[0] == b"OK" and theirs[0] is True
        assert mine[1:] == [
            b"\x00\xffbytes",
            None,
            b"1.25",
            2,
            [b"a", b"b"],
            [f"{key}:k".encode(), 42],
            3,
        ]
        # Where redis-py's pipeline applies no callback, its replies are these.
        assert [theirs[i] for i in (1, 2, 4, 5, 6, 7)] == [mine[i] for i in (1, 2, 4, 5, 6, 7)]
    finally:
        await raw.aclose()
        await client.aclose()


async def test_an_error_reply_fails_its_batch_and_the_next_batch_reads_its_own(
    redis_url: str, redis_prefix: str
) -> None:
    client = make_redis(redis_url)
    raw = RawPipeline(client)
    key = f"{redis_prefix}raw-err"
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            await raw.execute([("SET", key, "not a number")])
            with pytest.raises(ResponseError):
                await raw.execute([("INCR", key), ("SET", key, "after"), ("GET", key)])
            # Every reply of the failed batch was read: this batch's are its own.
            assert await raw.execute([("GET", key), ("DEL", key)]) == [b"after", 1]
    finally:
        await raw.aclose()
        await client.aclose()


async def test_a_connection_the_server_closed_is_replaced(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, killer = make_redis(redis_url), make_redis(redis_url)
    raw = RawPipeline(client)
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            (first,) = await raw.execute([("CLIENT", "ID")])
            assert await killer.client_kill_filter(_id=first) == 1
            await asyncio.sleep(0.05)  # the close reaches this side
            (second,) = await raw.execute([("CLIENT", "ID")])
            assert second != first
            # Killed while idle and not noticed before the batch is sent (the close had not
            # reached this side yet: reading paused until the batch is written): the batch is
            # sent again, on a new connection.
            held = raw._replies
            assert held is not None
            held.transport.pause_reading()
            assert await killer.client_kill_filter(_id=second) == 1
            await asyncio.sleep(0.05)
            assert not held.closed
            writes = []
            write = raw._write

            def write_then_read(replies: Any, batch: Any) -> None:
                writes.append(replies)
                write(replies, batch)
                if replies is held:
                    held.transport.resume_reading()

            monkeypatch.setattr(raw, "_write", write_then_read)
            (third,) = await raw.execute([("CLIENT", "ID")])
            assert third not in (first, second)
            assert len(writes) == 2 and writes[0] is held  # the lost one, then the new one
            assert writes[1] is not held
    finally:
        await raw.aclose()
        await client.aclose()
        await killer.aclose()


async def test_a_batch_cut_short_leaves_no_reply_for_the_next(
    redis_url: str, redis_prefix: str
) -> None:
    client, pusher = make_redis(redis_url), make_redis(redis_url)
    raw = RawPipeline(client, timeout=0.2)
    waits_on, then = f"{redis_prefix}raw-list", f"{redis_prefix}raw-v"
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            await pusher.set(then, "mine")
            with pytest.raises(RedisTimeoutError):
                await raw.execute([("BLPOP", waits_on, 1)])
            # The BLPOP's reply (here: the pushed value) must not be read as the GET's.
            await pusher.rpush(waits_on, "stale")
            assert await raw.execute([("GET", then)]) == [b"mine"]

            task = asyncio.create_task(raw.execute([("BLPOP", waits_on + "2", 1)]))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await pusher.rpush(waits_on + "2", "stale")
            assert await raw.execute([("GET", then)]) == [b"mine"]
    finally:
        await pusher.delete(waits_on, waits_on + "2", then)
        await raw.aclose()
        await client.aclose()
        await pusher.aclose()


async def test_an_idle_pooled_connection_the_server_closed_is_made_again(redis_url: str) -> None:
    """The pool hands out an idle connection as it is: one the server closed while it sat in
    the pool is connected again before a batch goes out on it (else the batch would wait for
    replies that never come, until the timeout)."""
    client, killer = make_redis(redis_url), make_redis(redis_url)
    pool = client.connection_pool
    raw = RawPipeline(client, timeout=2.0)
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            idle = await pool.get_connection()  # type: ignore[no-untyped-call]
            await idle.send_command("CLIENT", "ID")
            idle_id = await idle.read_response()
            await pool.release(idle)
            assert await killer.client_kill_filter(_id=idle_id) == 1
            await asyncio.sleep(0.05)  # the close reaches the idle connection
            (got,) = await raw.execute([("CLIENT", "ID")])
        assert raw._connection is idle  # the pool gave it, and it was made again
        assert got != idle_id
    finally:
        await raw.aclose()
        await client.aclose()
        await killer.aclose()


async def test_replies_that_arrive_in_pieces_are_read_whole_and_in_order() -> None:
    """A reply cut across reads waits for its rest; a RESP3 ``false`` is a reply, not "not
    enough data"; each batch gets its own replies, an error reply fails only its batch."""

    class Transport:
        def is_closing(self) -> bool:
            return False

        def abort(self) -> None:
            raise AssertionError("nothing here is out of step")

    loop = asyncio.get_running_loop()
    reader = hiredis.Reader(
        protocolError=InvalidResponse, replyError=ResponseError, notEnoughData=_NOT_ENOUGH_DATA
    )
    replies = _Replies(Transport(), reader, stream_protocol=None)  # type: ignore[arg-type]
    first = _Batch(loop.create_future(), b"", 3)
    second = _Batch(loop.create_future(), b"", 2)
    replies.waiting.extend([first, second])
    data = b"+OK\r\n$5\r\nhello\r\n#f\r\n-ERR nope\r\n:42\r\n"
    for i in range(len(data)):
        replies.data_received(data[i : i + 1])
    assert first.future.result() == [b"OK", b"hello", False]
    with pytest.raises(ResponseError, match="nope"):
        second.future.result()
    assert not replies.waiting
