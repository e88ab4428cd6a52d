"""Optional sampling profiles of the flowgate server with py-spy (``--profile``).

py-spy attaches to the running server for exactly the measured window of a scenario and writes
collapsed stacks; :func:`summarize` turns them into the share of busy samples per function
(self and inclusive) and per package. Profiled runs are separate from the timed ones.

With ``--native`` (:data:`NATIVE`) py-spy also unwinds C frames (system calls, OpenSSL, the
event loop's own code), which it can do only by pausing the process for each sample: such a
run's figures are slower still, and its samples cover every thread, so the summary keeps the
event loop's thread and drops the samples where it waits in ``epoll``.
"""

from __future__ import annotations

import collections
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: ``--native``: unwind C frames too (py-spy's ``--native``; it cannot be ``--nonblocking``).
NATIVE = False
#: ``--native``: samples per second (the measured windows are a few seconds long).
NATIVE_RATE = 1000

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

AREAS = {
    "app": "flowgate (src/app)",
    "litestar": "litestar",
    "uvicorn": "uvicorn",
    "websockets": "websockets (frames)",
    "wsproto": "websockets (frames)",
    "sqlalchemy": "sqlalchemy + advanced_alchemy",
    "advanced_alchemy": "sqlalchemy + advanced_alchemy",
    "aiosqlite": "db drivers",
    "asyncpg": "db drivers",
    "sqlite3": "db drivers",
    "redis": "redis client",
    "jwt": "jwt + cryptography",
    "cryptography": "jwt + cryptography",
    "msgspec": "msgspec",
    "asyncio": "asyncio (Python part)",
    "logging": "logging",
    "threading": "threads (aiosqlite)",
    "queue": "threads (aiosqlite)",
}


def py_spy() -> str | None:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    return found


class Profiler:
    def __init__(self, pid: int, output: Path, rate: int = 250) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed (uv sync --group bench)")
        self.output = output
        how = ["--native"] if NATIVE else ["--nonblocking"]
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(NATIVE_RATE if NATIVE else rate),
                "--format",
                "raw",
                "--output",
                str(output),
                *how,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # attach before the window opens

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(f.startswith("0x") for f in frames):  # --native: the busy event loop only
            frames = [f for f in frames if not f.startswith("0x")]
            if not any(f.startswith("Runner.run ") for f in frames):
                continue  # another thread (a worker, py-spy's own)
            if any(f.startswith("epoll_pwait ") for f in frames[-3:]):
                continue  # the loop waiting
        stacks.append((frames, int(count)))
    return stacks


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"]
    return f"{match['func']} ({file})"


def _area(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return "other"
    if match["func"] == "Runner.run":
        # uvloop's loop is C: a sample here is the event loop itself (syscalls, scheduling).
        return "event loop (uvloop, C)"
    if ".so" in match["file"] or match["file"].endswith((".c", ".h", ".pyx", ".pxd", ".pxi")):
        return "native (C: system calls, libraries, the interpreter)"
    top = match["file"].split("/", 1)[0].removesuffix(".py")
    return AREAS.get(top, "other")


_ROOTS = (
    "<frozen",
    "click/",
    "rich_click/",
    "asyncio/runners",
    "uvicorn/main",
    "uvicorn/server",
    "uvicorn/_compat",
    "app/cli/",
    "app/__main__",
    "litestar/cli/",
    "threading",
)


def _is_root(name: str) -> bool:
    file = name.rpartition(" (")[2]
    return file.startswith(_ROOTS)


def summarize(path: Path, top: int = 25) -> str:
    """Shares of busy samples: by package (innermost known frame), self, and inclusive."""
    stacks = _parse(path)
    total = sum(count for _, count in stacks)
    if not total:
        return f"{path.name}: no samples\n"
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        own[_name(frames[-1])] += count
        for name in {_name(f) for f in frames}:
            inclusive[name] += count
        areas[_area(frames[-1])] += count
    lines = [
        f"{path.name}: {total} busy samples (py-spy, main thread; self time by package of "
        "the innermost frame)",
        "",
    ]
    lines += [f"  {100 * n / total:5.1f}%  {a}" for a, n in areas.most_common()]
    lines += ["", f"self time, top {top}:"]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["", f"inclusive time, top {top * 2}:"]
    shown = [(f, n) for f, n in inclusive.most_common() if not _is_root(f)][: top * 2]
    lines += [f"  {100 * n / total:5.1f}%  {f}" for f, n in shown]
    return "\n".join(lines) + "\n"
