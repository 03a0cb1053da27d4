#!/usr/bin/env python3
"""Summarises a soak run of benches/compare.sh (SOAK=...): every target's answers and latency
over the whole soak, and behalf's memory curve from soak-rss.tsv.

    python3 benches/soak_report.py RESULTS_DIR OUT.json

Flat means: the RSS at the end is within 10% (or 4 MiB, whichever is larger) of the RSS after
the first minute, once allocator arenas and caches have warmed up. Exits 1 if any answer was
not a 200, the audit chain did not verify, or the memory curve is not flat.
"""

import json
import os
import re
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    results, out = sys.argv[1], sys.argv[2]
    meta = json.load(open(os.path.join(results, "meta.json")))

    targets = []
    failed = False
    for name in sorted(os.listdir(results)):
        m = re.fullmatch(r"soak-(.+)-1\.json", name)
        if not m:
            continue
        data = json.load(open(os.path.join(results, name)))
        codes = {int(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
        answered = sum(codes.values())
        pct = data.get("latencyPercentiles") or {}
        errors = sum((data.get("errorDistribution") or {}).values())
        ok = codes.get(200, 0) / answered if answered else 0.0
        failed |= ok < 1.0 or errors > 0
        targets.append({
            "target": m.group(1),
            "requests": answered,
            "rps": data["summary"]["requestsPerSec"],
            "ok": ok,
            "transport_errors": errors,
            "p50_ms": (pct.get("p50") or 0) * 1000,
            "p99_ms": (pct.get("p99") or 0) * 1000,
            "p999_ms": (pct.get("p99.9") or 0) * 1000,
        })

    samples = []
    with open(os.path.join(results, "soak-rss.tsv")) as f:
        next(f)
        for line in f:
            t, rss = line.split()
            if rss:
                samples.append((int(t), int(rss)))
    if not samples:
        sys.exit("soak_report.py: no RSS samples in soak-rss.tsv")
    mib = lambda kib: kib / 1024
    start = samples[0][1]
    peak = max(r for _, r in samples)
    end = samples[-1][1]
    warm = next((r for t, r in samples if t >= 60), start)
    flat = end - warm <= max(0.10 * warm, 4 * 1024)
    failed |= not flat or meta.get("behalf_audit_verify_ok") is False

    print(f"Soak: {' '.join(t['target'] for t in targets)} at once, "
          f"{meta.get('date_utc')} to {meta.get('end_utc')}")
    print(f"{'target':<14}{'requests':>12}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'ok':>9}")
    for t in targets:
        print(f"{t['target']:<14}{t['requests']:>12,}{t['rps']:>10,.0f}{t['p50_ms']:>9.2f}"
              f"{t['p99_ms']:>9.2f}{t['p999_ms']:>10.2f}{t['ok']:>8.2%}"
              + ("  FAILED" if t["ok"] < 1.0 or t["transport_errors"] else ""))
    print(f"behalf RSS: start {mib(start):.1f} MiB, after 1 min {mib(warm):.1f} MiB, "
          f"peak {mib(peak):.1f} MiB, end {mib(end):.1f} MiB "
          f"({len(samples)} samples) -> {'flat' if flat else 'GROWING'}")
    print(f"behalf: {meta.get('behalf_audit_records_during_load'):,} audit records, audit verify "
          f"{'passed' if meta.get('behalf_audit_verify_ok') else 'FAILED'}, exit status on SIGINT "
          f"{meta.get('behalf_exit_status')}")

    json.dump({
        "meta": meta,
        "targets": targets,
        "rss_kib": {"start": start, "after_1_min": warm, "peak": peak, "end": end,
                    "flat": flat, "samples": samples},
    }, open(out, "w"), indent=2)
    print(f"Summary JSON: {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
