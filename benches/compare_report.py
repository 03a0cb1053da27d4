#!/usr/bin/env python3
"""Summarise a benches/compare.sh results directory: oha JSON files PHASE-TARGET-ROUND.json
(PHASE is `max` or `fixed`), cpu.tsv and meta.json. Prints each run, then per phase and target
the mean over rounds of req/s, p50, p99, the share of 200 answers, the target's CPU per request
and its peak RSS, with the ratios behalf/direct and behalf/each peer; writes it all as JSON.
Each group of targets has its own baseline and behalf target (GROUPS): the plain-HTTP proxies
direct and behalf, the HTTPS ones direct-tls and behalf-tls, the tool invocations wasmtime-echo
and tool-echo.

    python3 benches/compare_report.py RESULTS_DIR [OUT.json]

Exits non-zero if any measured request got anything but a 200 (the upstream answers 401 when
the credential did not arrive), if any upstream call of tool-fetch got anything but a 200 (from
behalf's audit log, meta.json) or behalf's audit chain did not verify.
"""

import csv
import glob
import json
import os
import re
import sys
from statistics import mean

PHASES = {"max": "max rate", "fixed": "fixed rate"}
# Per group of targets: (its baseline, its behalf target, the group's behalf targets).
TOOL_TARGETS = {"wasmtime-echo", "tool-echo", "tool-fetch"}
GROUPS = {
    "plain": ("direct", "behalf", {"behalf"}),
    "tls": ("direct-tls", "behalf-tls", {"behalf-tls"}),
    "tools": ("wasmtime-echo", "tool-echo", {"tool-echo", "tool-fetch"}),
}


def group_of(target):
    if target in TOOL_TARGETS:
        return "tools"
    return "tls" if target.endswith("-tls") else "plain"


def load_runs(results, ticks_per_s):
    cpu = {}
    path = os.path.join(results, "cpu.tsv")
    if os.path.exists(path):
        with open(path) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                cpu[(row["phase"], row["target"], int(row["round"]))] = (
                    int(row["target_cpu_ticks"]) / ticks_per_s,
                    int(row["upstream_cpu_ticks"]) / ticks_per_s,
                )
    runs = []
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        m = re.fullmatch(r"(max|fixed)-([\w.-]+)-(\d+)\.json", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            data = json.load(f)
        codes = {int(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
        errors = data.get("errorDistribution") or {}
        answered = sum(codes.values())
        attempted = answered + sum(errors.values())
        pct = data.get("latencyPercentiles") or {}
        phase, target, rnd = m.group(1), m.group(2), int(m.group(3))
        target_cpu, upstream_cpu = cpu.get((phase, target, rnd), (None, None))
        runs.append(
            {
                "phase": phase,
                "target": target,
                "round": rnd,
                "rps": data["summary"]["requestsPerSec"],
                "p50_ms": (pct.get("p50") or 0) * 1e3,
                "p99_ms": (pct.get("p99") or 0) * 1e3,
                "requests": attempted,
                "ok_requests": codes.get(200, 0),
                "status_401": codes.get(401, 0),
                "other_codes": {c: n for c, n in codes.items() if c != 200},
                "errors": errors,
                "target_cpu_s": target_cpu,
                "upstream_cpu_s": upstream_cpu,
            }
        )
    return runs


def fmt(v, spec, dash="-"):
    return dash if v is None else format(v, spec)


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "."
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(results, "summary.json")
    meta = {}
    if os.path.exists(os.path.join(results, "meta.json")):
        with open(os.path.join(results, "meta.json")) as f:
            meta = json.load(f)
    ticks = meta.get("clock_ticks_per_s", 100)
    runs = load_runs(results, ticks)
    if not runs:
        sys.exit(f"no PHASE-TARGET-ROUND.json files in {results}")
    order = [t["name"] for t in meta.get("targets", [])]
    for r in runs:
        if r["target"] not in order:
            order.append(r["target"])
    rss = {t["name"]: t.get("peak_rss_kib") for t in meta.get("targets", [])}

    row = "{:<10} {:<13} {:>5} {:>9} {:>8} {:>8} {:>9} {:>5} {:>9}"
    print()
    print("Each run (in the order they ran, interleaved):")
    print(row.format("phase", "target", "round", "req/s", "p50 ms", "p99 ms", "requests", "401s", "CPU s"))
    for r in sorted(runs, key=lambda r: (list(PHASES).index(r["phase"]), r["round"], order.index(r["target"]))):
        print(
            row.format(
                PHASES[r["phase"]], r["target"], r["round"], f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}", f"{r['requests']:,}", r["status_401"], fmt(r["target_cpu_s"], ".1f"),
            )
        )

    summary = []
    for phase in PHASES:
        for t in order:
            rs = [r for r in runs if r["phase"] == phase and r["target"] == t]
            if not rs:
                continue
            cpu = [r["target_cpu_s"] for r in rs if r["target_cpu_s"] is not None]
            requests = sum(r["requests"] for r in rs)
            ok = sum(r["ok_requests"] for r in rs)
            summary.append(
                {
                    "phase": phase,
                    "target": t,
                    "group": group_of(t),
                    "baseline": GROUPS[group_of(t)][0],
                    "rounds": len(rs),
                    "rps": mean(r["rps"] for r in rs),
                    "rps_per_round": [r["rps"] for r in sorted(rs, key=lambda r: r["round"])],
                    "p50_ms": mean(r["p50_ms"] for r in rs),
                    "p99_ms": mean(r["p99_ms"] for r in rs),
                    "p99_ms_per_round": [r["p99_ms"] for r in sorted(rs, key=lambda r: r["round"])],
                    "requests": requests,
                    "ok": ok / requests if requests else 0.0,
                    "status_401": sum(r["status_401"] for r in rs),
                    "non_200": sum(sum(r["other_codes"].values()) for r in rs),
                    "transport_errors": sum(sum(r["errors"].values()) for r in rs),
                    # CPU of the target's own processes per answered request (direct: the upstream;
                    # behalf's targets: the one behalf process).
                    "cpu_us_per_request": (sum(cpu) / ok * 1e6) if cpu and ok else None,
                    "peak_rss_mib": (rss[t] / 1024) if rss.get(t) else None,
                }
            )
    for s in summary:
        same = {b["target"]: b for b in summary if b["phase"] == s["phase"]}
        # Each target against its group's baseline (x_direct: req/s over the baseline's) and its
        # group's behalf target (direct, direct-tls, wasmtime-echo / behalf, behalf-tls, tool-echo).
        base_name, behalf_name, behalf_targets = GROUPS[s["group"]]
        direct = same.get(base_name)
        behalf = same.get(behalf_name)
        if direct and s["target"] != base_name:
            s["x_direct"] = s["rps"] / direct["rps"] if direct["rps"] else None
            s["added_p50_ms"] = s["p50_ms"] - direct["p50_ms"]
            s["added_p99_ms"] = s["p99_ms"] - direct["p99_ms"]
        if behalf and s["target"] not in behalf_targets:
            # behalf / this target: > 1 means behalf does better (more req/s, lower p99).
            s["behalf_rps_ratio"] = behalf["rps"] / s["rps"] if s["rps"] else None
            s["behalf_p99_ratio"] = behalf["p99_ms"] / s["p99_ms"] if s["p99_ms"] else None

    print()
    print("Summary (mean over rounds). x direct = req/s against direct; behalf/T = behalf's req/s")
    print("over this target's (above 1: behalf is faster); +p99 = p99 minus direct's p99.")
    print("HTTPS targets (-tls) against direct-tls and behalf-tls; tool targets against")
    print("wasmtime-echo (as direct) and tool-echo (as behalf). RSS: peak over the whole run")
    print("(behalf, behalf-tls, tool-echo and tool-fetch are one process).")
    row = "{:<10} {:<13} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>7}"
    print(row.format("phase", "target", "req/s", "p50 ms", "p99 ms", "+p99 ms", "CPU µs", "RSS MiB",
                     "x direct", "behalf/T", "ok"))
    for s in summary:
        print(
            row.format(
                PHASES[s["phase"]], s["target"], f"{s['rps']:,.0f}", f"{s['p50_ms']:.2f}",
                f"{s['p99_ms']:.2f}", fmt(s.get("added_p99_ms"), "+.2f"), fmt(s["cpu_us_per_request"], ".0f"),
                fmt(s["peak_rss_mib"], ".1f"), fmt(s.get("x_direct"), ".2f"),
                fmt(s.get("behalf_rps_ratio"), ".2f"), f"{s['ok']:.2%}",
            )
        )

    # The same summary as a Markdown table (for docs/benchmarks.md), beside the raw results.
    md = ["| phase | target | req/s | p50 | p99 | added p99 | CPU/req | peak RSS | x direct | behalf/target | 200s |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        md.append(
            f"| {PHASES[s['phase']]} | {s['target']} | {s['rps']:,.0f} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms "
            f"| {fmt(s.get('added_p99_ms'), '+.2f')} | {fmt(s['cpu_us_per_request'], '.0f')} µs "
            f"| {fmt(s['peak_rss_mib'], '.1f')}{' MiB' if s['peak_rss_mib'] else ''} | {fmt(s.get('x_direct'), '.2f')} "
            f"| {fmt(s.get('behalf_rps_ratio'), '.2f')} | {s['ok']:.2%} |"
        )
    with open(os.path.join(results, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    fetch_statuses = meta.get("tool_fetch_upstream_statuses") or {}
    fetch_failed = {c: n for c, n in fetch_statuses.items() if c != "200"}

    failed_runs = [r for r in runs if r["other_codes"]]
    if failed_runs:
        print()
        print("FAILED runs (a non-200 answer; a 401 means the credential did not arrive):")
        for r in failed_runs:
            print(f"  {r['phase']}-{r['target']}-{r['round']}: codes {r['other_codes']} errors {r['errors']}")
    error_runs = [r for r in runs if r["errors"] and not r["other_codes"]]
    if error_runs:
        print()
        print("Runs with transport errors (no answer at all; counted in the requests, not as 200s):")
        for r in error_runs:
            print(f"  {r['phase']}-{r['target']}-{r['round']}: {r['errors']}")

    if meta:
        print()
        print(
            f"Machine: {meta.get('cpus')} CPUs ({meta.get('cpu_model')}), kernel {meta.get('kernel')}, "
            f"load average {meta.get('loadavg_before')} before / {meta.get('loadavg_after')} after; "
            f"{meta.get('oha')}; {meta.get('date_utc')} to {meta.get('end_utc')}"
        )
        print(
            f"Settings: {meta.get('connections')} keep-alive connections, {meta.get('duration')} per run, "
            f"{meta.get('rounds')} rounds, fixed rate {meta.get('fixed_rate')} req/s; tool targets: "
            f"{meta.get('tool_connections')} connections, fixed rate {meta.get('tool_fixed_rate')} req/s"
        )
        print("Versions: " + "; ".join(f"{t['name']}: {t['version']}" for t in meta.get("targets", [])))
        if meta.get("behalf_audit_verify_ok") is not None:
            print(
                f"behalf: {meta.get('behalf_audit_records_during_load', 0):,} audit records during the load, "
                f"audit verify {'passed' if meta.get('behalf_audit_verify_ok') else 'FAILED'}, "
                f"exit status on SIGINT {meta.get('behalf_exit_status')}; "
                f"upstream peak RSS {meta.get('upstream_peak_rss_kib', 0) / 1024:.1f} MiB"
            )
        if fetch_statuses:
            print(
                "tool-fetch: the weather tool's upstream calls by status (audit log, probe and "
                f"warm-up included): {json.dumps(fetch_statuses)}{'  FAILED' if fetch_failed else ''}"
            )
    print(f"Raw oha JSON: {results}")
    print(f"Summary JSON: {out}")

    with open(out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=2, default=str)

    failed = bool(failed_runs) or bool(fetch_failed) or meta.get("behalf_audit_verify_ok") is False
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
