#!/usr/bin/env bash
# Load script (not a timed test): throughput and p50/p99 latency of requests sent directly to a
# local upstream vs through behalf's forward proxy with bearer injection, on keep-alive
# connections, measured with oha. The upstream answers 401 unless the expected bearer token
# arrived, so every behalf request is verified to really carry the injected credential.
#
#   bash benches/load.sh
#
# Settings (environment):
#   DURATION=10s   length of each measured run
#   WARMUP=2s      unmeasured run against each target first (fills connection pools)
#   CONNS=50       keep-alive connections oha holds open
#   ROUNDS=2       A/B rounds per phase (direct, behalf, direct, behalf, ...)
#   RATE=auto      total req/s of the fixed-rate phase; auto = half of behalf's lowest
#                  max-rate throughput, rounded down; 0 skips the phase
#   RESULTS=DIR    where oha's raw JSON, the summary and run metadata are kept
#                  (default target/bench-load/<UTC timestamp>)
#   KEEP=1         keep the throw-away policy/state directory (path printed at the end)
#   BUILD=0        measure the binaries already in target/release instead of building
#   BEHALF_LOG     passed through to behalf (default: its own, info)
#
# Needs: cargo, curl, python3; installs oha with `cargo install oha --locked` when missing.
# Measurements take about (WARMUP*2 + DURATION*ROUNDS*4) plus builds: ~1.5 min by default.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-auto}
RESULTS=${RESULTS:-$ROOT/target/bench-load/$(date -u +%Y%m%dT%H%M%SZ)}
KEEP=${KEEP:-0}
BUILD=${BUILD:-1}

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'load.sh: %s\n' "$*" >&2
    exit 1
}

# --- tools ---------------------------------------------------------------------------------------
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
UPSTREAM=$ROOT/target/release/examples/bench_upstream
if [[ $BUILD == 1 ]]; then
    log "building behalf (release) and the bench upstream"
    cargo build --release --quiet --bin behalf --example bench_upstream
fi
[[ -x $BEHALF && -x $UPSTREAM ]] || die "missing $BEHALF or $UPSTREAM (run without BUILD=0)"

# --- throw-away policy and state ---------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/behalf-load.XXXXXX")
PIDS=()
cleanup() {
    local status=$?
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == 1 ]]; then
        printf 'load.sh: kept %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

POL=$WORK/policies
STATE=$WORK/state
mkdir -p "$POL/services" "$POL/tenants" "$RESULTS"
ORIGIN=http://upstream.bench:8080
cat >"$POL/behalf.toml" <<'EOF'
# Development mode: the dev issuer mints tokens and --connect-to sends the origin to loopback.
dev = true
EOF
cat >"$POL/services/upstream.toml" <<EOF
[service]
name = "upstream"
origins = ["$ORIGIN"]
credential = { name = "upstream_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
allow_plaintext = true
EOF
cat >"$POL/tenants/bench.toml" <<'EOF'
[tenant]
name = "bench"

[[grant]]
id = "bench-proxy"
who = ["user:alice"]
clients = ["proxy"]
service = "upstream"
allow = ["GET /**"]
EOF

bh() { "$BEHALF" --policies "$POL" --state "$STATE" "$@"; }

SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
printf '%s' "$SECRET" | bh secret set bench/alice/upstream_token >/dev/null
TOKEN=$(bh token mint --tenant bench --user alice --ttl 2h)

# Waits for the first line of FILE (a process announcing its address), at most 10 s.
first_line() {
    local file=$1 pid=$2 i
    for i in $(seq 100); do
        if [[ -s $file ]]; then
            head -n 1 "$file"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

log "starting the upstream and behalf on free loopback ports"
"$UPSTREAM" 127.0.0.1:0 "$SECRET" >"$WORK/upstream.out" 2>"$WORK/upstream.err" &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
UP_ADDR=$(first_line "$WORK/upstream.out" "$UPSTREAM_PID") ||
    die "the upstream did not start: $(cat "$WORK/upstream.err")"

# Started directly (not through bh) so that $! is behalf itself: its RSS is read and SIGINT sent.
"$BEHALF" --policies "$POL" --state "$STATE" serve --proxy 127.0.0.1:0 \
    --connect-to "$ORIGIN=$UP_ADDR" >"$WORK/behalf.out" 2>"$WORK/behalf.err" &
BEHALF_PID=$!
PIDS+=("$BEHALF_PID")
for _ in $(seq 100); do
    grep -q 'forward proxy http://' "$WORK/behalf.err" 2>/dev/null && break
    kill -0 "$BEHALF_PID" 2>/dev/null || die "behalf did not start: $(cat "$WORK/behalf.err")"
    sleep 0.1
done
PROXY=$(grep -o 'forward proxy http://[0-9.:]*' "$WORK/behalf.err" | head -n 1 | cut -d' ' -f3)
[[ -n $PROXY ]] || die "behalf did not announce its proxy address: $(cat "$WORK/behalf.err")"

DIRECT_URL=http://$UP_ADDR/bench
PROXIED_URL=$ORIGIN/bench

# --- correctness first: behalf really injects ----------------------------------------------------
log "checking: direct with/without the token, and through behalf with only Proxy-Authorization"
expect() {
    local want=$1 what=$2
    shift 2
    local got
    got=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "$@") || got="curl failed"
    if [[ $got != "$want" ]]; then
        die "$what: expected $want, got $got"
    fi
    printf '   %-62s %s\n' "$what" "$got" >&2
}
expect 200 "direct, Authorization: Bearer <secret>" -H "Authorization: Bearer $SECRET" "$DIRECT_URL"
expect 401 "direct, no Authorization" "$DIRECT_URL"
expect 200 "behalf, Proxy-Authorization only (behalf injects)" \
    -x "$PROXY" -H "Proxy-Authorization: Bearer $TOKEN" "$PROXIED_URL"
expect 200 "behalf, caller's wrong Authorization is replaced" \
    -x "$PROXY" -H "Proxy-Authorization: Bearer $TOKEN" -H "Authorization: Bearer wrong" "$PROXIED_URL"
expect 407 "behalf, no Proxy-Authorization" -x "$PROXY" "$PROXIED_URL"

# --- measurements --------------------------------------------------------------------------------
audit_lines() { cat "$STATE"/audit/*.jsonl 2>/dev/null | wc -l; }
AUDIT_BEFORE=$(audit_lines)
# Other work on the machine skews every figure: recorded beside them.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
ERR_BEFORE=$(wc -c <"$WORK/behalf.err")

# oha against one target: oha_run NAME JSON_OUT [extra oha args...]
oha_run() {
    local name=$1 out=$2
    shift 2
    local target=()
    case $name in
    direct) target=(-H "Authorization: Bearer $SECRET" "$DIRECT_URL") ;;
    # --no-pre-lookup: the origin's name only resolves inside behalf (--connect-to).
    behalf) target=(--no-pre-lookup -x "$PROXY" --proxy-header "Proxy-Authorization: Bearer $TOKEN" "$PROXIED_URL") ;;
    *) die "unknown scenario $name" ;;
    esac
    # -w: requests in flight at the deadline finish and count, instead of being errors.
    oha --no-tui --output-format json -w -c "$CONNS" "$@" "${target[@]}" >"$out"
}

SCENARIOS=(direct behalf)

log "warm-up ($WARMUP each, not measured)"
for s in "${SCENARIOS[@]}"; do
    oha_run "$s" "$RESULTS/warmup-$s.json" -z "$WARMUP"
done

log "max rate: $CONNS keep-alive connections, $DURATION per run, $ROUNDS A/B rounds"
for r in $(seq "$ROUNDS"); do
    for s in "${SCENARIOS[@]}"; do
        printf '   round %s %s\n' "$r" "$s" >&2
        oha_run "$s" "$RESULTS/max-$s-$r.json" -z "$DURATION"
    done
done

if [[ $RATE == auto ]]; then
    RATE=$(python3 - "$RESULTS" <<'EOF'
import glob, json, math, sys
rps = [json.load(open(f))["summary"]["requestsPerSec"] for f in glob.glob(sys.argv[1] + "/max-behalf-*.json")]
half = min(rps) / 2
step = 10 ** max(0, int(math.log10(half)) - 1) if half >= 1 else 1
print(max(1, int(half // step * step)))
EOF
)
fi
if [[ $RATE != 0 ]]; then
    log "fixed rate: $RATE req/s total over $CONNS connections, latency-corrected, $DURATION per run"
    for r in $(seq "$ROUNDS"); do
        for s in "${SCENARIOS[@]}"; do
            printf '   round %s %s\n' "$r" "$s" >&2
            oha_run "$s" "$RESULTS/fixed-$s-$r.json" -z "$DURATION" -q "$RATE" --latency-correction
        done
    done
fi

kill -0 "$BEHALF_PID" 2>/dev/null || die "behalf exited during the run: $(tail -n 20 "$WORK/behalf.err")"
AUDIT_AFTER=$(audit_lines)
ERR_GROWTH=$(($(wc -c <"$WORK/behalf.err") - ERR_BEFORE))
PEAK_RSS_KB=$(awk '/^VmHWM/ {print $2}' "/proc/$BEHALF_PID/status" 2>/dev/null || echo 0)
UP_PEAK_RSS_KB=$(awk '/^VmHWM/ {print $2}' "/proc/$UPSTREAM_PID/status" 2>/dev/null || echo 0)

# Stop behalf cleanly (final audit sync), then check the chain it wrote under load.
# SIGINT is behalf's ctrl-c; SIGTERM after 10 s if it has not stopped.
kill -INT "$BEHALF_PID"
for _ in $(seq 100); do
    kill -0 "$BEHALF_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$BEHALF_PID" 2>/dev/null; then
    log "behalf did not stop within 10 s of SIGINT; sending SIGTERM"
    kill -TERM "$BEHALF_PID" 2>/dev/null || true
fi
BEHALF_STATUS=0
wait "$BEHALF_PID" || BEHALF_STATUS=$?
[[ $BEHALF_STATUS == 0 ]] || log "behalf exited with status $BEHALF_STATUS on shutdown"
if VERIFY=$(bh audit verify 2>&1); then VERIFY_OK=1; else VERIFY_OK=0; fi
cp "$WORK/behalf.err" "$RESULTS/behalf.stderr"

python3 - "$RESULTS" <<EOF
import json, os, platform, subprocess
meta = {
    "date_utc": subprocess.check_output(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], text=True).strip(),
    "cpus": os.cpu_count(),
    "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
    "kernel": platform.release(),
    "loadavg_before": "$LOAD_BEFORE".split(),
    "loadavg_after": open("/proc/loadavg").read().split()[:3],
    "oha": "$OHA_VERSION",
    "behalf_commit": subprocess.run(["git", "-C", "$ROOT", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip(),
    "duration": "$DURATION", "warmup": "$WARMUP", "connections": $CONNS, "rounds": $ROUNDS, "fixed_rate": $RATE,
    "behalf_peak_rss_kib": int("$PEAK_RSS_KB" or 0),
    "upstream_peak_rss_kib": int("$UP_PEAK_RSS_KB" or 0),
    "audit_records_during_load": $AUDIT_AFTER - $AUDIT_BEFORE,
    "behalf_stderr_bytes_during_load": $ERR_GROWTH,
    "audit_verify_ok": bool($VERIFY_OK),
    "behalf_exit_status": $BEHALF_STATUS,
}
json.dump(meta, open("$RESULTS/meta.json", "w"), indent=2)
EOF
printf '%s\n' "$VERIFY" >"$RESULTS/audit-verify.txt"

python3 "$ROOT/benches/load_report.py" "$RESULTS" | tee "$RESULTS/summary.txt"
