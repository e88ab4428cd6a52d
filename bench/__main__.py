"""``python -m bench``: run the scenarios against flowgate and the bare echo app, print the table.

python -m bench                                  # everything (make bench), ~15 minutes
python -m bench --scenarios B1,B3 --repeats 3 --backend embedded
python -m bench --quick                          # smaller loads, one repeat: a smoke test
python -m bench --scenarios B1 --backend pg --profile   # py-spy profiles of flowgate
python -m bench --scenarios B2 --profile --native        # ... with C frames (syscalls)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bench import profiling, report, servers
from bench.profiling import summarize as summarize_profile
from bench.scenarios import (
    NO_HEARTBEAT_INTERVAL,
    PAIRED,
    SCENARIOS,
    SOLO,
    Result,
    Target,
    run_paired,
    run_scenario,
)
from bench.servers import Backend, Server

RESULTS = Path(__file__).resolve().parent / "results"

#: ``--quick``: the same scenarios with less work each.
QUICK = {
    "B1": {"requests": 100, "rounds": 2},
    "B2": {"connects": 400, "rate_connects": 400},
    "B3": {"sockets": 1000},
    "B4": {"sockets": 500, "idle": 3.0},
    "B5": {"chats": 20, "rounds": 1},
    "B2R": {"connects": 400, "rate_connects": 400},
    "B4H": {"sockets": 500},
    "STORM": {"sockets": 500},
    "B6": {"loads": (5, 20), "turns": 1},
    "CLI": {"runs": 3},
}
#: Which backends each scenario runs on (B5, STORM and B6 need PostgreSQL and Redis: they
#: are about several processes on one backend, or the turn log and bus). B4H on pg only:
#: the heartbeats are uvicorn's on both, and its run is long.
SCENARIO_BACKENDS = {
    "B1": ("embedded", "pg"),
    "B2": ("embedded", "pg"),
    "B2R": ("embedded", "pg"),
    "B3": ("embedded", "pg"),
    "B4": ("embedded", "pg"),
    "B4H": ("pg",),
    "B5": ("pg",),
    "STORM": ("pg",),
    "B6": ("pg",),
    "CLI": ("embedded", "pg"),
}
#: Settings a scenario's servers run with on top of the run's (both servers are restarted
#: into them, and out of them for the next scenario, only when they change). B4: no
#: heartbeat in its idle window for either server; every other scenario runs the default
#: FLOWGATE_WS_PING_INTERVAL (20 s), B4H measures what those heartbeats cost.
SCENARIO_ENV = {"B4": {"FLOWGATE_WS_PING_INTERVAL": str(NO_HEARTBEAT_INTERVAL)}}
#: At most this many repeats (of --repeats) for scenarios whose one run is long, to keep a
#: full run near 15 minutes: B4H's window is a whole ping period (20 s) per server; CLI
#: times 14 processes per run; B6 has no echo to pair with; B2R seeds 2016 chats and
#: restarts the server per run; STORM starts a process per run.
MAX_REPEATS = {"B4H": 1, "CLI": 1, "B6": 1, "B2R": 2, "STORM": 2}
DEFAULT_SCENARIOS = "B1,B2,B2R,B3,B4,B4H,B5,STORM,B6,CLI"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenarios",
        default=DEFAULT_SCENARIOS,
        help=f"comma-separated ids (default: all, {DEFAULT_SCENARIOS})",
    )
    parser.add_argument(
        "--backend",
        default="embedded,pg",
        help="embedded, pg, or both (default); B5 runs on pg only",
    )
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument(
        "--ws",
        default="websockets-sansio",
        choices=("websockets-sansio", "websockets", "wsproto"),
        help="uvicorn's WebSocket implementation, for both servers",
    )
    parser.add_argument("--quick", action="store_true", help="smaller loads (a smoke test)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile flowgate with py-spy, one extra run per scenario",
    )
    parser.add_argument(
        "--native",
        action="store_true",
        help="with --profile: C frames too (py-spy --native; pauses per sample)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where raw results go")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip().upper() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    args.backend = [b.strip() for b in args.backend.split(",") if b.strip()]
    if any(b not in ("embedded", "pg") for b in args.backend):
        parser.error("--backend takes embedded, pg or embedded,pg")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.native and not args.profile:
        parser.error("--native goes with --profile")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profiling.NATIVE = args.native
    run_id = secrets.token_hex(4)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out / f"{stamp}-{run_id}"
    out.mkdir(parents=True, exist_ok=True)
    servers.compile_bytecode()
    fds = servers.raise_fd_limit()
    pinning = servers.plan_pinning()
    secret = servers.new_secret()
    env = servers.base_env(args.ws, secret)
    # The load generator issues the tokens itself, with the servers' secret.
    os.environ.update({k: v for k, v in env.items() if k.startswith("FLOWGATE_")})
    from app.infra.auth.token_issuer import issue_token
    from app.infra.settings import load_settings

    jwt_settings = load_settings().jwt
    serial = iter(range(10**9))

    def tokens(n: int) -> list[str]:
        # A distinct token per connection (a distinct `name` claim); 100 users.
        return [
            issue_token(
                jwt_settings, user_id=f"bench-u{i % 100}", name=f"n{next(serial)}", ttl_seconds=3600
            )
            for i in range(n)
        ]

    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    header = [
        f"flowgate benchmark {stamp} (run {run_id})",
        f"machine: {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
        f"pinning: {pinning.describe()}; fd limit {fds}; load generator: raw asyncio protocol "
        f"client on {loop_name}, one process",
        f"servers: uvicorn ws={args.ws}, same settings for both; log level WARNING; "
        "FLOWGATE_MAX_CONNECTIONS_PER_USER=100000, FLOWGATE_MESSAGES_PER_SECOND=1000000",
        f"scenarios {','.join(args.scenarios)}, repeats {args.repeats}"
        + (", QUICK (reduced loads)" if args.quick else ""),
    ]
    print("\n".join(header), flush=True)

    records: list[dict[str, Any]] = []
    backends_used: dict[str, str] = {}
    profiles: list[Path] = []
    failures: list[str] = []
    started = time.monotonic()
    workdir = servers.make_workdir(out, run_id)
    try:
        for backend_name in args.backend:
            todo = [
                s
                for s in args.scenarios
                if backend_name in SCENARIO_BACKENDS[s]
                or (s in ("B5", "B4H") and "pg" not in args.backend)
            ]
            if not todo:
                continue
            if backend_name == "pg":
                ok, why = servers.services_up()
                if not ok:
                    print(f"skipping the pg backend: {why}; start them with `bash .ci/services`")
                    continue
            backend = Backend.create(backend_name, run_id, workdir)
            backends_used[backend_name] = backend.describe
            try:
                run_backend(
                    args, env, backend, todo, tokens, run_id, out, pinning, profiles, records
                )
            except Exception as exc:  # report what the other backends measured
                print(f"backend {backend_name} failed: {exc}", file=sys.stderr)
                failures.append(f"{backend_name}: {exc}"[:500])
            finally:
                backend.drop()
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        servers.remove_workdir(workdir)

    rows = report.summarize(records)
    text = (
        "\n".join(header)
        + "\nbackends:\n"
        + "\n".join(f"  {name}: {what}" for name, what in backends_used.items())
        + ("\nFAILED: " + "\nFAILED: ".join(failures) if failures else "")
        + f"\ntotal time {time.monotonic() - started:.0f} s\n\n"
        + report.table(rows)
        + "\n"
    )
    print("\n" + text)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {"header": header, "backends": backends_used, "records": records, "summary": rows},
            indent=1,
            default=str,
        )
    )
    for path in profiles:
        if path.exists():
            (path.with_suffix(".summary.txt")).write_text(summarize_profile(path))
    if profiles:
        print(f"profiles: {len(profiles)} files, summaries *.summary.txt in {out}")
    print(f"raw results: {out}")
    return 1 if failures else 0


def run_backend(
    args: argparse.Namespace,
    env: dict[str, str],
    backend: Backend,
    todo: list[str],
    tokens: Any,
    run_id: str,
    out: Path,
    pinning: servers.Pinning,
    profiles: list[Path],
    done: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    server_env = env | backend.env

    def record(
        scenario: str, backend: Backend, target: Target, repeat: int, result: Result, t0: float
    ) -> None:
        done.append(
            {
                "scenario": scenario,
                "backend": backend.name,
                "server": target.name,
                "repeat": repeat,
                "figures": result.figures,
                "errors": result.errors,
            }
        )
        shown = ", ".join(f"{k}={v:.4g}" for k, v in result.figures.items())
        print(
            f"  {scenario} #{repeat} {target.name:8s} {time.monotonic() - t0:5.1f}s "
            f"errors={result.errors} {shown}",
            flush=True,
        )

    print(f"\n== backend {backend.name}: {backend.describe}", flush=True)
    flow_id = servers.prepare_flowgate(server_env, out)
    fg = Server(
        "flowgate", server_env, args.ws, pinning.server, out / f"flowgate-{backend.name}.log"
    )
    echo = Server("echo", server_env, args.ws, pinning.server, out / f"echo-{backend.name}.log")
    records = done
    try:
        fg.start()
        echo.start()
        targets = [Target(s, flow_id, tokens, f"{run_id}{backend.name[0]}") for s in (fg, echo)]
        for scenario in todo:
            options = QUICK.get(scenario, {}) if args.quick else {}
            for server in (fg, echo):
                server.ensure_env(SCENARIO_ENV.get(scenario, {}))
            for repeat in range(min(args.repeats, MAX_REPEATS.get(scenario, args.repeats))):
                # Interleaved: the order of the two servers alternates between repeats.
                order = targets if repeat % 2 == 0 else targets[::-1]
                if scenario in SOLO:
                    order = targets[:1]
                if scenario in PAIRED:
                    # Both servers in one run, their pieces interleaved (see PAIRED).
                    t0 = time.monotonic()
                    for target in order:
                        target.server.check_alive()
                    results = asyncio.run(run_paired(scenario, order, **options))
                    for target, result in zip(order, results, strict=True):
                        target.server.check_alive()
                        record(scenario, backend, target, repeat, result, t0)
                    continue
                for target in order:
                    t0 = time.monotonic()
                    target.server.check_alive()
                    result = asyncio.run(run_scenario(scenario, target, **options))
                    target.server.check_alive()
                    record(scenario, backend, target, repeat, result, t0)
            if args.profile:
                fg.profile_to = out / f"profile-{scenario}-{backend.name}"
                try:
                    asyncio.run(run_scenario(scenario, targets[0], **options))
                except Exception as exc:  # a sampled server is slower: its run may time out
                    print(
                        f"  {scenario} profiled run failed ({exc!r}); its samples are kept",
                        file=sys.stderr,
                    )
                finally:
                    fg.profile_to = None
                print(f"  {scenario} profiled: {', '.join(p.name for p in fg.profiles)}")
                profiles.extend(fg.profiles)
                fg.profiles = []
    finally:
        fg.stop()
        echo.stop()
    return records


if __name__ == "__main__":
    sys.exit(main())
