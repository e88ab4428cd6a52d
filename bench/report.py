"""Medians, ratios against the echo app (paired per repeat), targets, and the printed table."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Goal:
    metric: str
    kind: str  # "ratio": flowgate / echo; "diff": flowgate - echo; "abs": flowgate alone
    op: str  # ">=" | "<="
    bound: float
    label: str
    echo_metric: str | None = None  # the echo's figure to compare with, if another

    def met(self, value: float) -> bool:
        if math.isnan(value):
            return False
        return value >= self.bound if self.op == ">=" else value <= self.bound


GOALS: dict[str, list[Goal]] = {
    "B1": [Goal("msgs_per_s", "ratio", ">=", 0.80, "round trips/s")],
    "B2": [
        Goal("connects_per_s", "ratio", ">=", 0.45, "connects/s (8 at a time)"),
        Goal("fixed_rate_setup_p99_ms", "ratio", "<=", 2.0, "set-up p99 at 400/s"),
    ],
    "B3": [Goal("kib_per_socket", "ratio", "<=", 1.3, "KiB per idle socket")],
    "B2R": [
        Goal(
            "connects_per_s",
            "ratio",
            ">=",
            0.45,
            "reconnects/s to known chats, fresh process (8 at a time)",
        )
    ],
    "B4": [Goal("idle_cpu_pct", "diff", "<=", 0.5, "idle CPU without heartbeats, % of a core")],
    "STORM": [Goal("storm_s", "ratio", "<=", 2.0, "s from SIGTERM until all re-admitted")],
    "B6": [Goal("lo_delay_p99_ms", "abs", "<=", 10.0, "cross-process delay p99, ms (light load)")],
    "B5": [
        Goal(
            "stream_frames_per_s",
            "ratio",
            ">=",
            0.5,
            "stream frames/s vs echo msgs/s",
            echo_metric="frames_per_s",
        ),
    ],
}

#: Figures shown beside the goals (flowgate and echo medians).
EXTRA: dict[str, list[tuple[str, str]]] = {
    "B1": [("rtt_p50_us", "round trip p50, µs"), ("rtt_p99_us", "round trip p99, µs")],
    "B2": [
        ("setup_p50_ms", "set-up p50 (8 at a time), ms"),
        ("setup_p99_ms", "set-up p99 (8 at a time), ms"),
        ("fixed_rate_setup_p50_ms", "set-up p50 at 400/s, ms"),
        ("fixed_rate_achieved_per_s", "achieved rate at 400/s"),
        ("fixed_rate_server_cpu_pct", "server CPU at 400/s, %"),
        ("fixed_rate_loadgen_cpu_pct", "load generator CPU at 400/s, %"),
    ],
    "B3": [
        ("rss_before_mib", "RSS before, MiB"),
        ("rss_after_mib", "RSS with the sockets, MiB"),
        ("open_per_s", "sockets opened/s"),
    ],
    "B2R": [
        ("setup_p50_ms", "set-up p50 (8 at a time), ms"),
        ("setup_p99_ms", "set-up p99 (8 at a time), ms"),
        ("fixed_rate_setup_p50_ms", "set-up p50 at 400/s, ms"),
        ("fixed_rate_setup_p99_ms", "set-up p99 at 400/s, ms"),
        ("fixed_rate_achieved_per_s", "achieved rate at 400/s"),
        ("fixed_rate_server_cpu_pct", "server CPU at 400/s, %"),
    ],
    "B4": [
        ("idle_cpu_us_per_socket_s", "µs CPU per socket per second"),
        ("pings_in_window", "heartbeats in the window (must be 0)"),
    ],
    "B4H": [
        ("heartbeat_us_per_ping", "heartbeat µs CPU per socket per ping"),
        ("heartbeat_cpu_pct", "CPU with heartbeats (1 whole ping period), %"),
        ("heartbeat_baseline_cpu_pct", "CPU before the first ping (baseline), %"),
        ("pings_per_socket", "pings per socket in the window"),
        ("ping_interval_s", "ping interval, s"),
    ],
    "STORM": [
        ("storm_reconnect_p50_ms", "per-socket reconnect p50 (close → pong), ms"),
        ("storm_reconnect_p99_ms", "per-socket reconnect p99 (close → pong), ms"),
        ("storm_refused", "reconnect attempts refused (retried)"),
        ("storm_last_close_s", "s from SIGTERM until A closed its last socket"),
        ("storm_a_exit_s", "s from SIGTERM until A exited"),
        ("storm_a_cpu_s", "A's CPU s from SIGTERM to its exit (same core as B)"),
        ("storm_not_1012", "sockets not closed 1012"),
    ],
    "B6": [
        ("lo_chats", "light load: chats (one socket on each process)"),
        ("lo_pieces_per_s_on_b", "light load: pieces/s delivered on B"),
        ("lo_frames_per_s_on_b", "light load: frames/s delivered on B"),
        ("lo_delay_p50_ms", "light load: delay p50, ms"),
        ("lo_delay_max_ms", "light load: delay max, ms"),
        ("hi_chats", "heavier load: chats"),
        ("hi_pieces_per_s_on_b", "heavier load: pieces/s delivered on B"),
        ("hi_delay_p50_ms", "heavier load: delay p50, ms"),
        ("hi_delay_p99_ms", "heavier load: delay p99, ms"),
        ("hi_server_cpu_pct", "heavier load: process A CPU, %"),
        ("lo_pieces_missing_on_b", "pieces missing on B (both loads: see errors)"),
    ],
    "CLI": [
        ("cli_help_min_s", "`app --help` min, s"),
        ("cli_help_median_s", "`app --help` median, s"),
        ("cli_flows_list_min_s", "`app flows list` min, s"),
        ("cli_flows_list_median_s", "`app flows list` median, s"),
    ],
    "B5": [
        ("ttfp_p50_ms", "time to first piece p50, ms"),
        ("ttfp_p99_ms", "time to first piece p99, ms"),
        ("persisted_turns_per_s", "persisted turns/s"),
        ("frames_per_s", "all frames/s"),
        ("pieces_per_turn", "pieces per turn"),
    ],
}


def _median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


#: Measured on flowgate alone (bench.scenarios.SOLO): no echo figure, no ratio.
SOLO = {"B6", "CLI"}


def _figure(pairs: list[dict[str, dict[str, Any]]], server: str, metric: str) -> list[float]:
    """``metric`` of ``server`` in each repeat (NaN where that repeat lacks it)."""
    return [
        p[server]["figures"].get(metric, float("nan")) if server in p else float("nan")
        for p in pairs
    ]


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (scenario, backend, figure): medians and paired ratios over the repeats."""
    rows: list[dict[str, Any]] = []
    keys = sorted({(r["scenario"], r["backend"]) for r in records})
    for scenario, backend in keys:
        runs = [r for r in records if r["scenario"] == scenario and r["backend"] == backend]
        by_repeat: dict[int, dict[str, dict[str, Any]]] = {}
        for r in runs:
            by_repeat.setdefault(r["repeat"], {})[r["server"]] = r
        solo = scenario in SOLO
        pairs = [p for p in by_repeat.values() if "flowgate" in p and ("echo" in p or solo)]

        errors = {s: sum(p[s]["errors"] for p in pairs if s in p) for s in ("flowgate", "echo")}
        loadgen_max = max(
            (p[s]["figures"].get("loadgen_cpu_pct", 0.0) for p in pairs for s in p), default=0.0
        )
        common = {
            "scenario": scenario,
            "backend": backend,
            "repeats": len(pairs),
            "errors": errors,
            "server_cpu_pct": {
                s: _median(_figure(pairs, s, "server_cpu_pct")) for s in ("flowgate", "echo")
            },
            "loadgen_cpu_pct": {
                s: _median(_figure(pairs, s, "loadgen_cpu_pct")) for s in ("flowgate", "echo")
            },
            "loadgen_cpu_max_pct": loadgen_max,
            "stores_cpu_pct": {
                s: _median(_figure(pairs, s, "stores_cpu_pct")) for s in ("flowgate", "echo")
            },
            "other_cpu_max_pct": max(
                (p[s]["figures"].get("other_cpu_pct", 0.0) for p in pairs for s in p), default=0.0
            ),
            "steal_cpu_max_pct": max(
                (p[s]["figures"].get("steal_cpu_pct", 0.0) for p in pairs for s in p), default=0.0
            ),
        }
        for goal in GOALS.get(scenario, []):
            mine = _figure(pairs, "flowgate", goal.metric)
            theirs = _figure(pairs, "echo", goal.echo_metric or goal.metric)
            if goal.kind == "ratio":
                values = [a / b if b else float("nan") for a, b in zip(mine, theirs, strict=True)]
            elif goal.kind == "abs":
                values = list(mine)
            else:
                values = [a - b for a, b in zip(mine, theirs, strict=True)]
            value = _median(values)
            rows.append(
                common
                | {
                    "metric": goal.metric,
                    "label": goal.label,
                    "goal": f"{goal.kind} {goal.op} {goal.bound:g}",
                    "flowgate": _median(mine),
                    "echo": _median(theirs),
                    "value": value,
                    "per_repeat": values,
                    "met": goal.met(value),
                    "kind": goal.kind,
                }
            )
        for metric, label in EXTRA.get(scenario, []):
            rows.append(
                common
                | {
                    "metric": metric,
                    "label": label,
                    "goal": "",
                    "kind": "info",
                    "flowgate": _median(_figure(pairs, "flowgate", metric)),
                    "echo": _median(_figure(pairs, "echo", metric)),
                    "value": float("nan"),
                    "per_repeat": [],
                    "met": None,
                }
            )
    return rows


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    header = (
        "| id | backend | figure | flowgate | echo | flowgate ÷ echo (per repeat) | target | met "
        "| server CPU % fg / echo | loadgen CPU % fg / echo | PG+Redis CPU % fg |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        if row["kind"] == "info":
            value, goal, met = "", "", ""
        else:
            sign = {"diff": "−", "abs": "flowgate"}.get(row["kind"], "÷")
            per = ", ".join(_fmt(v) for v in row["per_repeat"])
            value = (
                f"**{row['value']:+.2f} pp** ({per})"
                if row["kind"] == "diff"
                else f"**{_fmt(row['value'])}** ({per})"
            )
            goal = row["goal"].replace("ratio", sign).replace("diff", sign).replace("abs", sign)
            met = "yes" if row["met"] else "**no**"
        cpu = row["server_cpu_pct"]
        own = row["loadgen_cpu_pct"]
        show_cpu = row["kind"] != "info"
        lines.append(
            f"| {row['scenario']} | {row['backend']} | {row['label']} | {_fmt(row['flowgate'])} "
            f"| {_fmt(row['echo'])} | {value} | {goal} | {met} "
            f"| {(_fmt(cpu['flowgate']) + ' / ' + _fmt(cpu['echo'])) if show_cpu else ''} "
            f"| {(_fmt(own['flowgate']) + ' / ' + _fmt(own['echo'])) if show_cpu else ''} "
            f"| {_fmt(row['stores_cpu_pct']['flowgate']) if show_cpu else ''} |"
        )
    notes = []
    for row in rows:
        if row["kind"] == "info":
            continue
        if row["loadgen_cpu_max_pct"] > 85:
            notes.append(
                f"{row['scenario']}/{row['backend']}: the load generator reached "
                f"{row['loadgen_cpu_max_pct']:.0f}% of its core: it may be the bottleneck"
            )
        if row["other_cpu_max_pct"] > 10:
            notes.append(
                f"{row['scenario']}/{row['backend']}: other processes of the machine used "
                f"up to {row['other_cpu_max_pct']:.0f}% of a core during a window "
                f"(the hypervisor's steal: up to {row['steal_cpu_max_pct']:.0f}%): "
                "figures disturbed"
            )
        if any(row["errors"].values()):
            notes.append(f"{row['scenario']}/{row['backend']}: errors {row['errors']}")
    return "\n".join(lines + sorted(set(notes)))
