#!/usr/bin/env python3
"""Summarise a benches/load.sh results directory: oha JSON files named PHASE-SCENARIO-ROUND.json
(PHASE is `max` or `fixed`), plus meta.json. Prints a per-run table and a per-scenario summary
(mean over rounds) with each scenario's throughput ratio and added latency against `direct`,
and writes the summary to summary.json beside the inputs.

    python3 benches/load_report.py target/bench-load/<run>
"""

import glob
import json
import os
import re
import sys
from statistics import mean

BASELINE = "direct"
PHASES = {"max": "max rate", "fixed": "fixed rate"}


def load_runs(results):
    runs = []
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        m = re.fullmatch(r"(max|fixed)-([\w.]+)-(\d+)\.json", os.path.basename(path))
        if not m:
            continue
        with open(path) as f:
            data = json.load(f)
        codes = {int(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
        errors = data.get("errorDistribution") or {}
        answered = sum(codes.values())
        attempted = answered + sum(errors.values())
        pct = data.get("latencyPercentiles") or {}
        runs.append(
            {
                "phase": m.group(1),
                "scenario": m.group(2),
                "round": int(m.group(3)),
                "rps": data["summary"]["requestsPerSec"],
                "p50_ms": (pct.get("p50") or 0) * 1e3,
                "p99_ms": (pct.get("p99") or 0) * 1e3,
                "requests": attempted,
                # Only a 200 counts: the upstream answers 401 when the credential is missing.
                "ok": codes.get(200, 0) / attempted if attempted else 0.0,
                "other_codes": {c: n for c, n in codes.items() if c != 200},
                "errors": errors,
            }
        )
    return runs


def order(runs):
    scenarios = []
    for r in sorted(runs, key=lambda r: (r["round"],)):
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    if BASELINE in scenarios:
        scenarios.remove(BASELINE)
        scenarios.insert(0, BASELINE)
    return scenarios


def main():
    results = sys.argv[1] if len(sys.argv) > 1 else "."
    runs = load_runs(results)
    if not runs:
        sys.exit(f"no PHASE-SCENARIO-ROUND.json files in {results}")
    meta = {}
    if os.path.exists(os.path.join(results, "meta.json")):
        with open(os.path.join(results, "meta.json")) as f:
            meta = json.load(f)
    scenarios = order(runs)

    row = "{:<11} {:<9} {:>5} {:>11} {:>9} {:>9} {:>9} {:>10}"
    print()
    print("Each run (in the order they ran, A/B interleaved):")
    print(row.format("phase", "scenario", "round", "req/s", "p50 ms", "p99 ms", "ok (200)", "requests"))
    for r in sorted(runs, key=lambda r: (list(PHASES).index(r["phase"]), r["round"], scenarios.index(r["scenario"]))):
        print(
            row.format(
                PHASES[r["phase"]], r["scenario"], r["round"], f"{r['rps']:,.0f}",
                f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['ok']:.2%}", f"{r['requests']:,}",
            )
        )

    summary = []
    for phase in PHASES:
        for s in scenarios:
            rs = [r for r in runs if r["phase"] == phase and r["scenario"] == s]
            if not rs:
                continue
            summary.append(
                {
                    "phase": phase,
                    "scenario": s,
                    "rounds": len(rs),
                    "rps": mean(r["rps"] for r in rs),
                    "p50_ms": mean(r["p50_ms"] for r in rs),
                    "p99_ms": mean(r["p99_ms"] for r in rs),
                    "ok": sum(r["ok"] * r["requests"] for r in rs) / max(1, sum(r["requests"] for r in rs)),
                    "requests": sum(r["requests"] for r in rs),
                }
            )
    for s in summary:
        base = next((b for b in summary if b["phase"] == s["phase"] and b["scenario"] == BASELINE), None)
        if base and s["scenario"] != BASELINE:
            s["rps_ratio_vs_direct"] = s["rps"] / base["rps"] if base["rps"] else None
            s["added_p50_ms"] = s["p50_ms"] - base["p50_ms"]
            s["added_p99_ms"] = s["p99_ms"] - base["p99_ms"]

    print()
    print("Summary (mean over rounds; ratio and added latency against direct in the same phase):")
    row = "{:<11} {:<9} {:>11} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}"
    print(row.format("phase", "scenario", "req/s", "p50 ms", "p99 ms", "ok (200)", "x direct", "+p50 ms", "+p99 ms"))
    for s in summary:
        ratio = s.get("rps_ratio_vs_direct")
        print(
            row.format(
                PHASES[s["phase"]], s["scenario"], f"{s['rps']:,.0f}", f"{s['p50_ms']:.3f}",
                f"{s['p99_ms']:.3f}", f"{s['ok']:.2%}",
                "-" if ratio is None else f"{ratio:.2f}",
                "-" if "added_p50_ms" not in s else f"{s['added_p50_ms']:+.3f}",
                "-" if "added_p99_ms" not in s else f"{s['added_p99_ms']:+.3f}",
            )
        )

    problems = [r for r in runs if r["other_codes"] or r["errors"]]
    if problems:
        print()
        print("Non-200 answers and errors:")
        for r in problems:
            print(f"  {r['phase']}-{r['scenario']}-{r['round']}: codes {r['other_codes']} errors {r['errors']}")

    if meta:
        print()
        print(
            f"Machine: {meta.get('cpus')} CPUs ({meta.get('cpu_model')}), kernel {meta.get('kernel')}, "
            f"load average before {' '.join(meta.get('loadavg_before', []))} / after "
            f"{' '.join(meta.get('loadavg_after', []))}; {meta.get('oha')}; "
            f"behalf {meta.get('behalf_commit')}; {meta.get('date_utc')}"
        )
        print(
            f"Settings: {meta.get('connections')} keep-alive connections, {meta.get('duration')} per run, "
            f"{meta.get('rounds')} rounds, fixed rate {meta.get('fixed_rate')} req/s"
        )
        print(
            f"behalf: peak RSS {meta.get('behalf_peak_rss_kib', 0) / 1024:.1f} MiB, "
            f"{meta.get('audit_records_during_load', 0):,} audit records written during the load, "
            f"stderr grew {meta.get('behalf_stderr_bytes_during_load', 0)} bytes, "
            f"audit verify {'passed' if meta.get('audit_verify_ok') else 'FAILED'}, "
            f"exit status on SIGINT {meta.get('behalf_exit_status')}"
        )
    print(f"Raw oha JSON: {results}")

    with open(os.path.join(results, "summary.json"), "w") as f:
        json.dump({"meta": meta, "runs": runs, "summary": summary}, f, indent=2, default=str)

    bad = [s for s in summary if s["ok"] < 1.0]
    sys.exit(1 if bad or not meta.get("audit_verify_ok", True) else 0)


if __name__ == "__main__":
    main()
