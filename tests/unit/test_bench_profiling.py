"""The benchmark's profile summary (bench/profiling.py) on py-spy's --native stacks: only the
event loop's busy samples count, C frames fall in the native area."""

from __future__ import annotations

from pathlib import Path

from bench.profiling import summarize

LOOP = "0x7f01 (libc.so.6);Runner.run (asyncio/runners.py:118);uv_run (libuv.so)"
RAW = "\n".join(
    [
        # busy on the loop: a write in the kernel under flowgate's send
        f"{LOOP};SocketTransport.send (app/api/chat_socket.py:70);write (libc.so.6) 30",
        # busy on the loop in Python
        f"{LOOP};FrameDispatcher.dispatch (app/domain/dispatcher.py:90) 10",
        # the loop waiting: dropped
        f"{LOOP};uv__io_poll (libuv.so);epoll_pwait (libc.so.6) 500",
        # another thread (a worker waiting on its queue): dropped
        "0x7f02 (libc.so.6);thread_run (libpython3.11.so.1.0);_worker "
        "(concurrent/futures/thread.py:83);0x7f03 (libc.so.6) 900",
    ]
)


def test_native_stacks_count_the_busy_loop_only(tmp_path: Path) -> None:
    path = tmp_path / "profile.txt"
    path.write_text(RAW + "\n")
    summary = summarize(path)
    assert "40 busy samples" in summary
    assert "75.0%  native (C: system calls, libraries, the interpreter)" in summary
    assert "25.0%  flowgate (src/app)" in summary
    assert "75.0%  write (libc.so.6)" in summary
    assert "epoll_pwait" not in summary
    assert "_worker" not in summary
