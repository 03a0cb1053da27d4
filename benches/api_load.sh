#!/usr/bin/env bash
# Load script (not a timed test): throughput and p50/p99 latency of tool invocations through the
# sidecar API, POST /v1/tools/echo/invoke with a small JSON body, on keep-alive connections,
# measured with oha. Each request is authenticated (HS256 dev token), runs a fresh wasm instance
# of the `echo` example tool and writes one audit record.
#
#   bash benches/api_load.sh
#
# Settings (environment):
#   DURATION=10s   length of the measured run
#   WARMUP=2s      unmeasured run first
#   CONNS=16       keep-alive connections oha holds open; the shipped policy allows 16
#                  concurrent invocations per tenant (tool_concurrency_per_tenant), so more
#                  connections than that get 429s
#   RESULTS=DIR    where oha's raw JSON and behalf's stderr are kept
#                  (default target/bench-api-load/<UTC timestamp>)
#   KEEP=1         keep the throw-away state directory (path printed at the end)
#   BUILD=0        measure target/release/behalf as it is instead of building
#
# Uses the shipped policies/ (dev = true, tools_dir = fixtures/tools) with a temporary --state.
# Needs: cargo, curl, python3; installs oha with `cargo install oha --locked` when missing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-16}
RESULTS=${RESULTS:-$ROOT/target/bench-api-load/$(date -u +%Y%m%dT%H%M%SZ)}
KEEP=${KEEP:-0}
BUILD=${BUILD:-1}

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'api_load.sh: %s\n' "$*" >&2
    exit 1
}

for tool in cargo curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
if ! command -v oha >/dev/null; then
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked
fi
OHA_VERSION=$(oha --version)
oha --help | grep -q -- '--output-format' || die "$OHA_VERSION has no --output-format; upgrade oha"

BEHALF=$ROOT/target/release/behalf
if [[ $BUILD == 1 ]]; then
    log "building behalf (release)"
    cargo build --release --quiet --bin behalf
fi
[[ -x $BEHALF ]] || die "missing $BEHALF (run without BUILD=0)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/behalf-api-load.XXXXXX")
STATE=$WORK/state
POL=$ROOT/policies
mkdir -p "$RESULTS"
BEHALF_PID=
cleanup() {
    local status=$?
    if [[ -n $BEHALF_PID ]]; then
        kill "$BEHALF_PID" 2>/dev/null || true
        wait "$BEHALF_PID" 2>/dev/null || true
    fi
    if [[ $KEEP == 1 ]]; then
        printf 'api_load.sh: kept %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bh() { "$BEHALF" --policies "$POL" --state "$STATE" "$@"; }

# Started directly (not through bh) so that $! is behalf itself: its RSS is read and SIGINT sent.
# Port 0 for both listeners; the API address is read from the banner.
log "starting behalf serve on the shipped policies (state: $STATE)"
"$BEHALF" --policies "$POL" --state "$STATE" serve --api 127.0.0.1:0 --proxy 127.0.0.1:0 \
    >"$WORK/behalf.out" 2>"$WORK/behalf.err" &
BEHALF_PID=$!
API=
for _ in $(seq 300); do
    API=$(grep -o 'API  *http://[0-9.:]*' "$WORK/behalf.err" 2>/dev/null | head -n 1 | grep -o 'http://.*') || true
    [[ -n $API ]] && break
    kill -0 "$BEHALF_PID" 2>/dev/null || die "behalf did not start: $(cat "$WORK/behalf.err")"
    sleep 0.1
done
[[ -n $API ]] || die "behalf did not announce its API address within 30 s: $(cat "$WORK/behalf.err")"
URL=$API/v1/tools/echo/invoke
BODY='{"hello":"world"}'

TOKEN=$(bh token mint --tenant acme --user alice --group engineering --ttl 2h)

log "checking one invocation: $URL"
CHECK=$(curl -sS --max-time 10 -w '\n%{http_code}' -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "$BODY" "$URL") || die "curl failed"
CODE=${CHECK##*$'\n'}
ANSWER=${CHECK%$'\n'*}
[[ $CODE == 200 ]] || die "expected 200, got $CODE: $ANSWER"
python3 -c 'import json,sys; a=json.loads(sys.argv[1]); assert a["output"]=={"echo":{"hello":"world"}}, a' \
    "$ANSWER" || die "unexpected answer: $ANSWER"
printf '   200 %s\n' "$ANSWER" >&2
NOAUTH=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -d "$BODY" "$URL") || NOAUTH="curl failed"
[[ $NOAUTH == 401 ]] || die "without a token: expected 401, got $NOAUTH"
printf '   401 without a token\n' >&2

oha_run() {
    local out=$1
    shift
    # -w: requests in flight at the deadline finish and count, instead of being errors.
    oha --no-tui --output-format json -w -c "$CONNS" "$@" -m POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' -d "$BODY" \
        "$URL" >"$out"
}

audit_lines() { cat "$STATE"/audit/*.jsonl 2>/dev/null | wc -l; }
# behalf's CPU time so far (user + system), in clock ticks.
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$BEHALF_PID/stat"; }
TICKS=$(getconf CLK_TCK)
RSS_IDLE_KB=$(awk '/^VmRSS/ {print $2}' "/proc/$BEHALF_PID/status")
log "warm-up ($WARMUP, not measured)"
oha_run "$RESULTS/warmup.json" -z "$WARMUP"

AUDIT_BEFORE=$(audit_lines)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_BEFORE=$(cpu_ticks)
log "measuring: $CONNS keep-alive connections for $DURATION"
oha_run "$RESULTS/invoke.json" -z "$DURATION"
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
CPU_AFTER=$(cpu_ticks)

kill -0 "$BEHALF_PID" 2>/dev/null || die "behalf exited during the run: $(tail -n 20 "$WORK/behalf.err")"
RSS_KB=$(awk '/^VmRSS/ {print $2}' "/proc/$BEHALF_PID/status")
PEAK_RSS_KB=$(awk '/^VmHWM/ {print $2}' "/proc/$BEHALF_PID/status")
AUDIT_AFTER=$(audit_lines)

# Stop behalf cleanly (final audit sync), then check the chain written under load.
kill -INT "$BEHALF_PID"
for _ in $(seq 100); do
    kill -0 "$BEHALF_PID" 2>/dev/null || break
    sleep 0.1
done
kill -TERM "$BEHALF_PID" 2>/dev/null || true
BEHALF_STATUS=0
wait "$BEHALF_PID" || BEHALF_STATUS=$?
BEHALF_PID=
if bh audit verify >"$RESULTS/audit-verify.txt" 2>&1; then VERIFY=passed; else VERIFY=FAILED; fi
cp "$WORK/behalf.err" "$RESULTS/behalf.stderr"

python3 - "$RESULTS/invoke.json" <<EOF
import json, os, sys
d = json.load(open(sys.argv[1]))
codes = {int(k): v for k, v in (d.get("statusCodeDistribution") or {}).items()}
errors = d.get("errorDistribution") or {}
attempted = sum(codes.values()) + sum(errors.values())
ok = codes.get(200, 0)
pct = d.get("latencyPercentiles") or {}
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print()
print(f"POST /v1/tools/echo/invoke, $CONNS connections, $DURATION ($OHA_VERSION)")
print(f"  req/s        {d['summary']['requestsPerSec']:,.0f}")
print(f"  p50          {(pct.get('p50') or 0) * 1e3:.3f} ms")
print(f"  p99          {(pct.get('p99') or 0) * 1e3:.3f} ms")
print(f"  success      {ok / attempted if attempted else 0:.2%} answered 200 ({ok:,} of {attempted:,})")
others = {c: n for c, n in codes.items() if c != 200}
if others or errors:
    print(f"  other        codes {others} errors {errors}")
cpu_s = ($CPU_AFTER - $CPU_BEFORE) / $TICKS
print(f"  behalf CPU   {cpu_s:.1f} s in the run, {cpu_s / attempted * 1e6 if attempted else 0:.0f} µs per request "
      f"(the rest of the {os.cpu_count()} CPUs went to oha and the kernel)")
print(f"  behalf RSS   {$RSS_KB / 1024:.1f} MiB after the run (peak {$PEAK_RSS_KB / 1024:.1f} MiB, "
      f"idle before the warm-up {$RSS_IDLE_KB / 1024:.1f} MiB)")
print(f"  audit        {$AUDIT_AFTER - $AUDIT_BEFORE:,} records during the run, verify $VERIFY, "
      f"exit status on SIGINT $BEHALF_STATUS")
print(f"  machine      {os.cpu_count()} CPUs ({model}), load average $LOAD_BEFORE before / $LOAD_AFTER after")
print(f"  raw          $RESULTS")
sys.exit(0 if attempted and ok == attempted and "$VERIFY" == "passed" else 1)
EOF
