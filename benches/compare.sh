#!/usr/bin/env bash
# Load comparison (not a timed test): behalf's forward proxy with bearer injection against the
# proxies people would use instead, each configured to add the same credential, all in front of
# ONE local upstream that answers 401 unless exactly `Authorization: Bearer <credential>`
# arrived, so every target is verified to really inject on every measured request.
#
#   bash benches/compare.sh
#   DURATION=5s WARMUP=1s bash benches/compare.sh          # a quick run (~5 min)
#   TARGETS="direct behalf nginx haproxy" bash benches/compare.sh
#   TARGETS=tools bash benches/compare.sh                    # tool invocations only
#
# Targets (plain HTTP, HTTP/1.1 keep-alive from the client; configs in benches/peers/):
#   direct     the upstream itself, the client sends the header (the limit)
#   behalf     forward proxy, absolute-form, Proxy-Authorization in, Authorization injected
#   nginx      reverse proxy, proxy_set_header Authorization        (peers/nginx.conf)
#   haproxy    reverse proxy, http-request set-header Authorization (peers/haproxy.cfg)
#   squid      forward proxy, request_header_add Authorization      (peers/squid.conf)
#   tinyproxy  forward proxy, AddHeader Authorization               (peers/tinyproxy.conf)
#   mitmproxy  mitmdump forward proxy with a small addon            (peers/mitmproxy_addon.py)
# and HTTPS through CONNECT with TLS interception, to an HTTPS upstream (nginx terminating TLS
# in front of the same upstream, peers/tls_upstream.conf; the client trusts each proxy's CA):
#   direct-tls     the HTTPS upstream itself, the client sends the header
#   behalf-tls     CONNECT upstream.bench:8443, behalf's interception CA, Authorization injected
#   squid-tls      squid ssl_bump (peers/squid_bump.conf)
#   mitmproxy-tls  mitmdump with the same addon, its own CA
# and tool invocations (a fresh wasm instance per request), POST with a small JSON body:
#   wasmtime-echo  `wasmtime serve` on fixtures/bench/http_echo (the echo tool as a wasi:http
#                  proxy component: {"echo": <input>}), no authentication (the baseline)
#   tool-echo      behalf's API, POST /v1/tools/echo/invoke with a dev token: authenticated,
#                  audited, the `echo` tool (fixtures/tools/echo)
#   tool-fetch     behalf's API, POST /v1/tools/weather/invoke: the `weather` tool makes ONE
#                  GET https://api.weather.example/... through behalf's egress, which the policy
#                  written here sends (--connect-to) to the HTTPS upstream with the credential
#                  injected as Authorization: Bearer (the shipped weather service uses a query
#                  parameter; the upstream only accepts the bearer header)
#
# Settings (environment):
#   DURATION=10s   length of each measured run
#   WARMUP=2s      unmeasured run against each target first (0 skips it)
#   CONNS=50       keep-alive connections oha holds open (proxy targets)
#   TOOL_CONNS=16  the same for the tool targets; behalf's policy here allows exactly that many
#                  concurrent invocations per tenant (tool_concurrency_per_tenant; 16 is the
#                  shipped default), so every connection always has a slot
#   ROUNDS=2       interleaved rounds per phase (every target once per round, in TARGETS order)
#   RATE=auto      total req/s of the fixed-rate phase; auto = half of the lowest max-rate
#                  throughput of any target, rounded down (a rate every target sustains);
#                  0 skips the phase (proxy targets)
#   TOOL_RATE=auto the same for the tool targets, from the tool targets' max rates
#   TARGETS=...    space-separated subset/order of the targets above (default: all fourteen;
#                  TARGETS=plain for the seven plain-HTTP ones, TARGETS=tls for the four HTTPS,
#                  TARGETS=tools for the three tool targets)
#   RESULTS=DIR    raw oha JSON, configs, logs, meta.json (default target/bench-compare/<UTC ts>)
#   OUT=FILE       the summary JSON (default benches/results/compare-<UTC ts>.json; not committed)
#   INSTALL=1      apt-get install missing peers (nginx-light haproxy squid-openssl tinyproxy
#                  mitmproxy; needs root), `cargo install oha --locked` if oha is missing and
#                  `cargo install wasmtime-cli --version 48.0.8 --locked` if wasmtime is
#                  missing (wasmtime-echo)
#   BUILD=0        measure the binaries already in target/release instead of building
#   KEEP=1         keep the throw-away work directory (path printed at the end)
#   SOAK=10m       instead of the max-rate and fixed-rate phases: every target in TARGETS at
#                  once, each at a fixed rate (SOAK_RATE=1000 req/s for proxy targets,
#                  SOAK_TOOL_RATE=100 for tool targets), for this long, with behalf's RSS
#                  sampled every SOAK_SAMPLE=10 seconds into soak-rss.tsv; prints start, peak
#                  and end RSS. E.g. SOAK=10m TARGETS="behalf behalf-tls tool-echo tool-fetch"
#
# Measurement time: TARGETS x (WARMUP + ROUNDS x DURATION x 2 phases) plus start-up; with the
# defaults 14 x (2 + 40) s ~ 10 min. Peak RSS is VmHWM summed over each target's processes (nginx:
# master and workers); CPU per request is the target's user+system time during its runs divided
# by the requests answered (for direct-tls that is the HTTPS upstream's nginx; it is not counted
# in the other -tls targets, nor in tool-fetch). tinyproxy closes every client connection after
# one answer, so oha opens a new connection per request for it (--disable-keepalive).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
STAMP=$(date -u +%Y%m%dT%H%M%SZ)

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-50}
ROUNDS=${ROUNDS:-2}
RATE=${RATE:-auto}
TOOL_CONNS=${TOOL_CONNS:-16}
TOOL_RATE=${TOOL_RATE:-auto}
SOAK=${SOAK:-0}
SOAK_RATE=${SOAK_RATE:-1000}
SOAK_TOOL_RATE=${SOAK_TOOL_RATE:-100}
SOAK_SAMPLE=${SOAK_SAMPLE:-10}
PLAIN_TARGETS="direct behalf nginx haproxy squid tinyproxy mitmproxy"
TLS_TARGETS="direct-tls behalf-tls squid-tls mitmproxy-tls"
TOOL_TARGETS="wasmtime-echo tool-echo tool-fetch"
TARGETS=${TARGETS:-$PLAIN_TARGETS $TLS_TARGETS $TOOL_TARGETS}
RESULTS=${RESULTS:-$ROOT/target/bench-compare/$STAMP}
OUT=${OUT:-$ROOT/benches/results/compare-$STAMP.json}
INSTALL=${INSTALL:-1}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}
[[ $TARGETS == plain ]] && TARGETS=$PLAIN_TARGETS
[[ $TARGETS == tls ]] && TARGETS=$TLS_TARGETS
[[ $TARGETS == tools ]] && TARGETS=$TOOL_TARGETS
read -r -a TARGET_LIST <<<"$TARGETS"

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH:/usr/sbin:/sbin"

log() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'compare.sh: %s\n' "$*" >&2
    exit 1
}
wants() {
    local t
    for t in "${TARGET_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done
    return 1
}
# The HTTPS upstream: for the -tls targets and for tool-fetch (the tool calls an https origin).
wants_tls() {
    local t
    for t in "${TARGET_LIST[@]}"; do [[ $t == *-tls ]] && return 0; done
    wants tool-fetch
}
wants_behalf() { wants behalf || wants behalf-tls || wants tool-echo || wants tool-fetch; }
is_tool() { [[ " $TOOL_TARGETS " == *" $1 "* ]]; }
conns_of() { if is_tool "$1"; then echo "$TOOL_CONNS"; else echo "$CONNS"; fi; }
for t in "${TARGET_LIST[@]}"; do
    case $t in direct | behalf | nginx | haproxy | squid | tinyproxy | mitmproxy) ;;
    direct-tls | behalf-tls | squid-tls | mitmproxy-tls) ;;
    wasmtime-echo | tool-echo | tool-fetch) ;;
    *) die "unknown target $t" ;;
    esac
done

# --- tools ---------------------------------------------------------------------------------------
for tool in cargo curl python3; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
declare -A PKG_OF=([nginx]=nginx-light [haproxy]=haproxy [squid]=squid-openssl
    [tinyproxy]=tinyproxy [mitmdump]=mitmproxy)
declare -A CMD_OF=([nginx]=nginx [haproxy]=haproxy [squid]=squid [tinyproxy]=tinyproxy
    [mitmproxy]=mitmdump [squid-tls]=squid [mitmproxy-tls]=mitmdump)
MISSING=()
if wants_tls; then
    command -v openssl >/dev/null || die "openssl is required for the HTTPS targets"
    command -v nginx >/dev/null || MISSING+=(nginx-light) # the HTTPS upstream
fi
for t in "${TARGET_LIST[@]}"; do
    cmd=${CMD_OF[$t]:-}
    [[ -n $cmd ]] && ! command -v "$cmd" >/dev/null && MISSING+=("${PKG_OF[$cmd]}")
done
if ((${#MISSING[@]})); then
    [[ $INSTALL == 1 ]] || die "missing peers: ${MISSING[*]} (INSTALL=0)"
    command -v apt-get >/dev/null || die "missing peers ${MISSING[*]} and no apt-get"
    log "installing ${MISSING[*]} with apt-get"
    SUDO=
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # Debian starts installed services; they are not used (every peer runs from its own config
    # on its own port) and the script does not stop them.
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
fi
if ! command -v oha >/dev/null; then
    [[ $INSTALL == 1 ]] || die "oha is missing (INSTALL=0)"
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked
fi
OHA_VERSION=$(oha --version)
oha --help | grep -q -- '--output-format' || die "$OHA_VERSION has no --output-format; upgrade oha"
# The wasmtime behalf embeds (Cargo.toml: wasmtime 48), as a CLI.
WASMTIME_VERSION=48.0.8
HTTP_ECHO=$ROOT/fixtures/bench/http_echo/http_echo.wasm
if wants wasmtime-echo; then
    if ! command -v wasmtime >/dev/null; then
        [[ $INSTALL == 1 ]] || die "wasmtime is missing (INSTALL=0)"
        log "installing wasmtime (cargo install wasmtime-cli --version $WASMTIME_VERSION --locked)"
        cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked
    fi
    [[ -f $HTTP_ECHO ]] || die "missing $HTTP_ECHO (fixtures/bench/http_echo/build.sh)"
fi

BEHALF=$ROOT/target/release/behalf
UPSTREAM=$ROOT/target/release/examples/bench_upstream
if [[ $BUILD == 1 ]]; then
    log "building behalf (release) and the bench upstream"
    cargo build --release --quiet --bin behalf --example bench_upstream
fi
[[ -x $BEHALF && -x $UPSTREAM ]] || die "missing $BEHALF or $UPSTREAM (run without BUILD=0)"

# --- throw-away work directory, processes ----------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/behalf-compare.XXXXXX")
chmod 755 "$WORK"
declare -A PID_OF=()
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
        printf 'compare.sh: kept %s\n' "$WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$RESULTS" "$(dirname "$OUT")"

# A free loopback port (bound and released: a small race, acceptable for a bench).
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
first_line() {
    local file=$1 pid=$2
    for _ in $(seq 100); do
        if [[ -s $file ]]; then
            head -n 1 "$file"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# --- behalf's policy, the credential, the identity token (as in load.sh) ---------------------------
POL=$WORK/policies
STATE=$WORK/state
mkdir -p "$POL/services" "$POL/tenants"
ORIGIN=http://upstream.bench:8080
cat >"$POL/behalf.toml" <<EOF
dev = true
tools_dir = "$ROOT/fixtures/tools"

[limits]
tool_concurrency_per_tenant = $TOOL_CONNS
EOF
cat >"$POL/services/upstream.toml" <<EOF
[service]
name = "upstream"
origins = ["$ORIGIN"]
credential = { name = "upstream_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
allow_plaintext = true
EOF
TLS=$WORK/tls
TLS_ORIGIN=https://upstream.bench:8443
mkdir -p "$TLS"
cat >"$POL/services/upstream_tls.toml" <<EOF
[service]
name = "upstream_tls"
origins = ["$TLS_ORIGIN"]
credential = { name = "upstream_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
tls_roots = ["$TLS/upstream-ca.pem"]
EOF
# The origin the `weather` tool calls, sent to the HTTPS upstream with the same credential.
WEATHER_ORIGIN=https://api.weather.example
cat >"$POL/services/weather.toml" <<EOF
[service]
name = "weather"
origins = ["$WEATHER_ORIGIN"]
credential = { name = "upstream_token", scope = "user" }
inject = { header = "Authorization", template = "Bearer {credential}" }
tls_roots = ["$TLS/upstream-ca.pem"]
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

[[grant]]
id = "bench-proxy-tls"
who = ["user:alice"]
clients = ["proxy"]
service = "upstream_tls"
allow = ["GET /**"]

[[tool_access]]
who = ["user:alice"]
tools = ["echo", "weather"]

[[grant]]
id = "bench-tool-fetch"
who = ["user:alice"]
clients = ["tool:weather"]
service = "weather"
allow = ["GET /data/2.5/weather"]
EOF
# Throw-away CAs: one for the HTTPS upstream (trusted by the proxies), one for squid's ssl_bump.
new_ca() { # new_ca NAME CN
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -keyout "$TLS/$1.key" -out "$TLS/$1.pem" -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
}
new_ca upstream-ca "bench upstream CA"
new_ca bump-ca "bench squid bump CA"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TLS/upstream.key" \
    -out "$TLS/upstream.csr" -subj /CN=upstream.bench 2>/dev/null
printf 'subjectAltName=DNS:upstream.bench,DNS:api.weather.example,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TLS/leaf.ext"
openssl x509 -req -in "$TLS/upstream.csr" -CA "$TLS/upstream-ca.pem" -CAkey "$TLS/upstream-ca.key" \
    -CAcreateserial -days 2 -extfile "$TLS/leaf.ext" -out "$TLS/upstream.pem" 2>/dev/null
chmod 644 "$TLS"/*
bh() { "$BEHALF" --policies "$POL" --state "$STATE" "$@"; }
SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
printf '%s' "$SECRET" | bh secret set bench/alice/upstream_token >/dev/null
TOKEN=$(bh token mint --tenant bench --user alice --ttl 2h)
bh ca export >"$TLS/behalf-ca.pem"

# --- the upstream ----------------------------------------------------------------------------------
log "starting the upstream"
"$UPSTREAM" 127.0.0.1:0 "$SECRET" >"$WORK/upstream.out" 2>"$WORK/upstream.err" &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
UP_ADDR=$(first_line "$WORK/upstream.out" "$UPSTREAM_PID") ||
    die "the upstream did not start: $(cat "$WORK/upstream.err")"
UP_HOST=${UP_ADDR%:*}
UP_PORT=${UP_ADDR##*:}
TLS_ADDR=
TLS_PORT=

# --- the targets -----------------------------------------------------------------------------------
# render TEMPLATE DIR PORT: the peer config with its placeholders filled, written into DIR.
render() {
    local template=$1 dir=$2 port=$3
    sed -e "s|@PORT@|$port|g" -e "s|@UP_HOST@|$UP_HOST|g" -e "s|@UP_PORT@|$UP_PORT|g" \
        -e "s|@TLS_HOST@|${TLS_ADDR%:*}|g" -e "s|@TLS_PORT@|$TLS_PORT|g" \
        -e "s|@TOKEN@|$SECRET|g" -e "s|@DIR@|$dir|g" "$ROOT/benches/peers/$template" \
        >"$dir/$template"
    chmod 644 "$dir/$template"
    cp "$ROOT/benches/peers/$template" "$RESULTS/" # the template, without the credential
}
declare -A ADDR_OF=()
start_peer() {
    local t=$1 dir=$WORK/$1 port
    port=$(free_port)
    mkdir -p "$dir/tmp"
    # Daemons that drop privileges (nginx workers, squid) must write here.
    chmod 1777 "$dir" "$dir/tmp"
    case $t in
    nginx)
        render nginx.conf "$dir" "$port"
        nginx -p "$dir" -c "$dir/nginx.conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    haproxy)
        render haproxy.cfg "$dir" "$port"
        haproxy -db -f "$dir/haproxy.cfg" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    squid)
        render squid.conf "$dir" "$port"
        squid -N -f "$dir/squid.conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    tinyproxy)
        render tinyproxy.conf "$dir" "$port"
        tinyproxy -d -c "$dir/tinyproxy.conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    tls-upstream)
        cp "$TLS/upstream.pem" "$TLS/upstream.key" "$dir/"
        render tls_upstream.conf "$dir" "$port"
        nginx -p "$dir" -c "$dir/tls_upstream.conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    squid-tls)
        cp "$TLS/bump-ca.pem" "$TLS/bump-ca.key" "$TLS/upstream-ca.pem" "$dir/"
        /usr/lib/squid/security_file_certgen -c -s "$dir/ssldb" -M 4MB >/dev/null
        if id proxy >/dev/null 2>&1; then chown -R proxy: "$dir/ssldb"; fi
        render squid_bump.conf "$dir" "$port"
        squid -N -f "$dir/squid_bump.conf" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    wasmtime-echo)
        # A fresh instance per request (the default for WASIp2 components, spelled out), as
        # behalf runs each invocation; -S cli: Rust's std imports wasi:cli (environment, exit),
        # which the bare proxy world does not provide (behalf's tools get it too).
        wasmtime serve -S cli --max-instance-reuse-count 1 --addr "127.0.0.1:$port" "$HTTP_ECHO" \
            >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    mitmproxy | mitmproxy-tls)
        cp "$ROOT/benches/peers/mitmproxy_addon.py" "$dir/" && cp "$dir/mitmproxy_addon.py" "$RESULTS/"
        BENCH_TOKEN=$SECRET BENCH_UPSTREAM=$UP_ADDR BENCH_UPSTREAM_TLS=$TLS_ADDR HOME=$dir \
            mitmdump -q --listen-host 127.0.0.1 --listen-port "$port" \
            --set connection_strategy=lazy --set confdir="$dir/mitm" \
            --set ssl_verify_upstream_trusted_ca="$TLS/upstream-ca.pem" \
            -s "$dir/mitmproxy_addon.py" >"$dir/stdout" 2>"$dir/stderr" &
        ;;
    esac
    PID_OF[$t]=$!
    PIDS+=("$!")
    ADDR_OF[$t]=127.0.0.1:$port
}

if wants_tls; then
    log "starting the HTTPS upstream (nginx terminating TLS in front of the upstream)"
    start_peer tls-upstream
    TLS_ADDR=${ADDR_OF[tls-upstream]}
    TLS_PORT=${TLS_ADDR##*:}
    for _ in $(seq 100); do
        curl -s -o /dev/null --cacert "$TLS/upstream-ca.pem" "https://$TLS_ADDR/" && break
        sleep 0.1
    done
fi

log "starting behalf and the peers: ${TARGET_LIST[*]}"
BEHALF_PID=
if wants_behalf; then
    # One behalf process serves every behalf target: the forward proxy and the API.
    CONNECT_TO=(--connect-to "$ORIGIN=$UP_ADDR")
    if [[ -n $TLS_ADDR ]]; then
        CONNECT_TO+=(--connect-to "$TLS_ORIGIN=$TLS_ADDR" --connect-to "$WEATHER_ORIGIN=$TLS_ADDR")
    fi
    "$BEHALF" --policies "$POL" --state "$STATE" serve --api 127.0.0.1:0 --proxy 127.0.0.1:0 \
        "${CONNECT_TO[@]}" >"$WORK/behalf.out" 2>"$WORK/behalf.err" &
    BEHALF_PID=$!
    PIDS+=("$!")
    for _ in $(seq 300); do # up to 30 s: the tools are compiled at start-up
        grep -q 'forward proxy http://' "$WORK/behalf.err" 2>/dev/null && break
        kill -0 "$BEHALF_PID" 2>/dev/null || die "behalf did not start: $(cat "$WORK/behalf.err")"
        sleep 0.1
    done
    ADDR_OF[behalf]=$(grep -o 'forward proxy http://[0-9.:]*' "$WORK/behalf.err" | head -n 1 | cut -d/ -f3)
    [[ -n ${ADDR_OF[behalf]} ]] || die "behalf did not announce its proxy address"
    API_ADDR=$(grep -o 'API  *http://[0-9.:]*' "$WORK/behalf.err" | head -n 1 | cut -d/ -f3)
    [[ -n $API_ADDR ]] || die "behalf did not announce its API address"
    for t in behalf behalf-tls tool-echo tool-fetch; do PID_OF[$t]=$BEHALF_PID; done
fi
PID_OF[direct]=$UPSTREAM_PID
ADDR_OF[direct]=$UP_ADDR
if [[ -n $TLS_ADDR ]]; then
    PID_OF[direct-tls]=${PID_OF[tls-upstream]}
fi
for t in "${TARGET_LIST[@]}"; do
    case $t in direct | behalf | direct-tls | behalf-tls | tool-echo | tool-fetch) ;;
    *) start_peer "$t" ;;
    esac
done

# The request each target is measured with (oha and curl take the same -x/-H forms).
declare -A URL_OF=() ARGS_OF=()
URL_OF[direct]=http://$UP_ADDR/bench
ARGS_OF[direct]="-H|Authorization: Bearer $SECRET"
URL_OF[behalf]=$ORIGIN/bench
ARGS_OF[behalf]="-x|http://${ADDR_OF[behalf]:-}|PROXYAUTH"
URL_OF[nginx]=http://${ADDR_OF[nginx]:-}/bench
URL_OF[haproxy]=http://${ADDR_OF[haproxy]:-}/bench
URL_OF[squid]=$ORIGIN/bench
ARGS_OF[squid]="-x|http://${ADDR_OF[squid]:-}"
URL_OF[tinyproxy]=http://$UP_ADDR/bench # tinyproxy resolves the origin itself: see its config
# tinyproxy answers one request per client connection and closes it without saying so
# (no `Connection: close`), so a keep-alive client races it; oha opens a connection per request.
ARGS_OF[tinyproxy]="-x|http://${ADDR_OF[tinyproxy]:-}|NOKEEPALIVE"
URL_OF[mitmproxy]=$ORIGIN/bench
ARGS_OF[mitmproxy]="-x|http://${ADDR_OF[mitmproxy]:-}"
TLS_URL=$TLS_ORIGIN/bench
URL_OF[direct-tls]=https://$TLS_ADDR/bench
ARGS_OF[direct-tls]="--cacert|$TLS/upstream-ca.pem|-H|Authorization: Bearer $SECRET"
URL_OF[behalf-tls]=$TLS_URL
ARGS_OF[behalf-tls]="-x|http://${ADDR_OF[behalf]:-}|PROXYAUTH|--cacert|$TLS/behalf-ca.pem"
URL_OF[squid-tls]=$TLS_URL
ARGS_OF[squid-tls]="-x|http://${ADDR_OF[squid-tls]:-}|--cacert|$TLS/bump-ca.pem"
URL_OF[mitmproxy-tls]=$TLS_URL
ARGS_OF[mitmproxy-tls]="-x|http://${ADDR_OF[mitmproxy-tls]:-}|--cacert|$WORK/mitmproxy-tls/mitm/mitmproxy-ca-cert.pem"
# Tool invocations: POST a JSON body (POSTJSON; the input) with the dev token (APITOKEN).
ECHO_BODY='{"hello":"world"}'
FETCH_BODY='{"q":"bench"}'
URL_OF[wasmtime-echo]=http://${ADDR_OF[wasmtime-echo]:-}/
ARGS_OF[wasmtime-echo]="POSTJSON|$ECHO_BODY"
URL_OF[tool-echo]=http://${API_ADDR:-}/v1/tools/echo/invoke
ARGS_OF[tool-echo]="APITOKEN|POSTJSON|$ECHO_BODY"
URL_OF[tool-fetch]=http://${API_ADDR:-}/v1/tools/weather/invoke
ARGS_OF[tool-fetch]="APITOKEN|POSTJSON|$FETCH_BODY"
# The answer each tool target must give (compact JSON; behalf wraps the tool's output in
# {"output", "invocation", "denials"}). tool-fetch: the upstream's 200, i.e. the credential arrived.
declare -A EXPECT_OF=(
    [wasmtime-echo]='.|{"echo":{"hello":"world"}}'
    [tool-echo]='output|{"echo":{"hello":"world"}}'
    [tool-fetch]='output.status|200'
)

# target_args TOOL TARGET: the client arguments for curl or oha, one per line.
target_args() {
    local tool=$1 t=$2 a post=0
    local IFS='|'
    for a in ${ARGS_OF[$t]:-}; do
        if [[ $post == 1 ]]; then # the body after POSTJSON
            if [[ $tool == oha ]]; then
                printf '%s\n' -m POST -T application/json -d "$a"
            else
                printf '%s\n' -H 'Content-Type: application/json' --data-raw "$a"
            fi
            post=0
        elif [[ $a == POSTJSON ]]; then
            post=1
        elif [[ $a == APITOKEN ]]; then
            printf '%s\n' -H "Authorization: Bearer $TOKEN"
        elif [[ $a == NOKEEPALIVE ]]; then
            [[ $tool == oha ]] && printf '%s\n' --disable-keepalive
        elif [[ $a == PROXYAUTH ]]; then
            # On the CONNECT for HTTPS, in the proxied request for plain HTTP (curl and oha alike).
            printf '%s\n' --proxy-header "Proxy-Authorization: Bearer $TOKEN"
        else
            printf '%s\n' "$a"
        fi
    done
    printf '%s\n' "${URL_OF[$t]}"
}

# --- correctness first: every target is up and really injects --------------------------------------
log "checking each target answers 200 (the upstream answers 401 without the credential)"
probe() { # probe TARGET: the status code of one request through it (the body in WORK/probe-T)
    local t=$1 args
    mapfile -t args < <(target_args curl "$t")
    curl -sS -o "$WORK/probe-$t" -w '%{http_code}' --max-time 5 "${args[@]}" 2>/dev/null || true
}
# check_answer TARGET: the answer in WORK/probe-T has EXPECT_OF's value at EXPECT_OF's path.
check_answer() {
    local t=$1
    [[ -z ${EXPECT_OF[$t]:-} ]] && return 0
    python3 - "$WORK/probe-$t" "${EXPECT_OF[$t]%%|*}" "${EXPECT_OF[$t]#*|}" <<'EOF' ||
import json, sys
answer = json.load(open(sys.argv[1]))
value = answer
for key in [k for k in sys.argv[2].split(".") if k]:
    value = value[key]
sys.exit(0 if value == json.loads(sys.argv[3]) else 1)
EOF
        die "$t: expected ${EXPECT_OF[$t]#*|} at ${EXPECT_OF[$t]%%|*}, got: $(head -c 2000 "$WORK/probe-$t")"
}
direct_noauth=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 "http://$UP_ADDR/bench") || true
[[ $direct_noauth == 401 ]] || die "the upstream without a credential: expected 401, got $direct_noauth"
printf '   %-13s %s\n' "no header" "401 (direct, no Authorization)" >&2
for t in "${TARGET_LIST[@]}"; do
    code=000
    for _ in $(seq 100); do # peers start in the background: up to 10 s each
        code=$(probe "$t")
        [[ $code == 200 ]] && break
        if [[ -n ${PID_OF[$t]:-} ]] && ! kill -0 "${PID_OF[$t]}" 2>/dev/null; then
            die "$t exited: $(tail -n 20 "$WORK/$t/stderr" "$WORK/$t"/*.log 2>/dev/null)"
        fi
        if [[ $t == direct-tls ]] && ! kill -0 "${PID_OF[tls-upstream]}" 2>/dev/null; then
            die "the HTTPS upstream exited: $(tail -n 20 "$WORK/tls-upstream/stderr" "$WORK/tls-upstream/error.log" 2>/dev/null)"
        fi
        sleep 0.1
    done
    [[ $code == 200 ]] || die "$t: expected 200, got $code: $(cat "$WORK/probe-$t" 2>/dev/null) $(tail -n 20 "$WORK/$t/stderr" 2>/dev/null)"
    check_answer "$t"
    printf '   %-13s %s %s\n' "$t" "$code" "$(is_tool "$t" && head -c 200 "$WORK/probe-$t")" >&2
done
if wants behalf; then
    # A caller's own Authorization is replaced, not sent beside the injected one (the upstream
    # answers 401 to two headers); no Proxy-Authorization is 407.
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -x "http://${ADDR_OF[behalf]}" \
        --proxy-header "Proxy-Authorization: Bearer $TOKEN" -H "Authorization: Bearer wrong" \
        "${URL_OF[behalf]}") || true
    [[ $code == 200 ]] || die "behalf with the caller's own Authorization: expected 200, got $code"
    printf '   %-13s %s\n' "own header" "200 (behalf replaced the caller's Authorization)" >&2
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -x "http://${ADDR_OF[behalf]}" \
        "${URL_OF[behalf]}") || true
    [[ $code == 407 ]] || die "behalf without Proxy-Authorization: expected 407, got $code"
    printf '   %-13s %s\n' "no proxy auth" "407 (behalf)" >&2
fi
if wants tool-echo || wants tool-fetch; then
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
        -d "$ECHO_BODY" "http://$API_ADDR/v1/tools/echo/invoke") || true
    [[ $code == 401 ]] || die "behalf's API without a token: expected 401, got $code"
    printf '   %-13s %s\n' "no token" "401 (behalf's API)" >&2
fi

# --- per-target accounting -------------------------------------------------------------------------
# The target's processes: the one started and its children (nginx's workers).
tree() {
    local pid=$1
    printf '%s\n' "$pid"
    pgrep -P "$pid" 2>/dev/null || true
}
cpu_ticks() { # user + system clock ticks of the target's processes (and their reaped children)
    local pid total=0 v
    for pid in $(tree "$1"); do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null) || v=0
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
peak_rss_kb() {
    local pid total=0 v
    for pid in $(tree "$1"); do
        v=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null) || v=0
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
TICKS=$(getconf CLK_TCK)
printf 'phase\ttarget\tround\ttarget_cpu_ticks\tupstream_cpu_ticks\n' >"$RESULTS/cpu.tsv"

# oha_run TARGET JSON_OUT [extra oha args...]
oha_run() {
    local t=$1 out=$2 args
    shift 2
    mapfile -t args < <(target_args oha "$t")
    # --no-pre-lookup: upstream.bench only resolves inside the proxies. -w: requests in flight
    # at the deadline finish and count.
    oha --no-tui --output-format json --no-pre-lookup -w -c "$(conns_of "$t")" "$@" "${args[@]}" >"$out"
}
# measure PHASE TARGET ROUND [extra oha args...]
measure() {
    local phase=$1 t=$2 r=$3 c0 c1 u0 u1
    shift 3
    printf '   %s round %s %s\n' "$phase" "$r" "$t" >&2
    c0=$(cpu_ticks "${PID_OF[$t]}")
    u0=$(cpu_ticks "$UPSTREAM_PID")
    oha_run "$t" "$RESULTS/$phase-$t-$r.json" -z "$DURATION" "$@"
    c1=$(cpu_ticks "${PID_OF[$t]}")
    u1=$(cpu_ticks "$UPSTREAM_PID")
    printf '%s\t%s\t%s\t%s\t%s\n' "$phase" "$t" "$r" $((c1 - c0)) $((u1 - u0)) >>"$RESULTS/cpu.tsv"
}

declare -A IDLE_RSS_OF=()
for t in "${TARGET_LIST[@]}"; do
    IDLE_RSS_OF[$t]=$(for pid in $(tree "${PID_OF[$t]}"); do awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null; done |
        awk '{ s += $1 } END { print s + 0 }')
done
AUDIT_BEFORE=$(cat "$STATE"/audit/*.jsonl 2>/dev/null | wc -l)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)

if [[ $WARMUP != 0 ]]; then
    log "warm-up ($WARMUP each, not measured)"
    for t in "${TARGET_LIST[@]}"; do
        oha_run "$t" "$RESULTS/warmup-$t.json" -z "$WARMUP"
    done
fi

if [[ $SOAK != 0 ]]; then
    [[ -n $BEHALF_PID ]] || die "SOAK needs a behalf target"
    log "soak: ${TARGET_LIST[*]} at once for $SOAK ($SOAK_RATE req/s per proxy target, $SOAK_TOOL_RATE per tool target), behalf's RSS every ${SOAK_SAMPLE}s"
    printf 'elapsed_s\trss_kib\n' >"$RESULTS/soak-rss.tsv"
    SOAK_PIDS=()
    for t in "${TARGET_LIST[@]}"; do
        rate=$SOAK_RATE
        is_tool "$t" && rate=$SOAK_TOOL_RATE
        oha_run "$t" "$RESULTS/soak-$t-1.json" -z "$SOAK" -q "$rate" --latency-correction &
        SOAK_PIDS+=("$!")
    done
    t0=$SECONDS
    soaking() {
        local pid
        for pid in "${SOAK_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
        return 1
    }
    while soaking; do
        printf '%s\t%s\n' $((SECONDS - t0)) "$(awk '/^VmRSS/ {print $2}' "/proc/$BEHALF_PID/status")" \
            >>"$RESULTS/soak-rss.tsv"
        sleep "$SOAK_SAMPLE"
    done
    for pid in "${SOAK_PIDS[@]}"; do wait "$pid" || die "an oha run of the soak failed"; done
    ROUNDS=0 RATE=0 TOOL_RATE=0
fi

((ROUNDS)) && log "max rate: $CONNS keep-alive connections ($TOOL_CONNS for tool targets), $DURATION per run, $ROUNDS interleaved rounds"
for r in $(seq "$ROUNDS"); do
    for t in "${TARGET_LIST[@]}"; do
        measure max "$t" "$r"
    done
done

# auto_rate TARGET...: half of the lowest max-rate req/s of these targets, rounded down.
auto_rate() {
    python3 - "$RESULTS" "$@" <<'EOF'
import json, math, os, re, sys
targets = set(sys.argv[2:])
rps = [json.load(open(os.path.join(sys.argv[1], f)))["summary"]["requestsPerSec"]
       for f in os.listdir(sys.argv[1])
       if (m := re.fullmatch(r"max-(.+)-\d+\.json", f)) and m.group(1) in targets]
half = min(rps) / 2
step = 10 ** max(0, int(math.log10(half)) - 1) if half >= 1 else 1
print(max(1, int(half // step * step)))
EOF
}
# The proxy targets and the tool targets each get their own fixed rate (tool invocations are
# far slower; one rate for both would leave the proxies nearly idle).
PROXY_LIST=() TOOL_LIST=()
for t in "${TARGET_LIST[@]}"; do
    if is_tool "$t"; then TOOL_LIST+=("$t"); else PROXY_LIST+=("$t"); fi
done
((${#PROXY_LIST[@]} && ROUNDS)) || RATE=0
((${#TOOL_LIST[@]} && ROUNDS)) || TOOL_RATE=0
[[ $RATE == auto ]] && RATE=$(auto_rate "${PROXY_LIST[@]}")
[[ $TOOL_RATE == auto ]] && TOOL_RATE=$(auto_rate "${TOOL_LIST[@]}")
rate_of() { if is_tool "$1"; then echo "$TOOL_RATE"; else echo "$RATE"; fi; }
if [[ $RATE != 0 || $TOOL_RATE != 0 ]]; then
    rates=
    [[ $RATE != 0 ]] && rates="$RATE req/s total over $CONNS connections, "
    [[ $TOOL_RATE != 0 ]] && rates+="tool targets $TOOL_RATE req/s over $TOOL_CONNS, "
    log "fixed rate: ${rates}latency-corrected, $DURATION per run"
    for r in $(seq "$ROUNDS"); do
        for t in "${TARGET_LIST[@]}"; do
            [[ $(rate_of "$t") == 0 ]] && continue
            measure fixed "$t" "$r" -q "$(rate_of "$t")" --latency-correction
        done
    done
fi

# --- after the load --------------------------------------------------------------------------------
declare -A RSS_OF=()
for t in "${TARGET_LIST[@]}"; do
    kill -0 "${PID_OF[$t]}" 2>/dev/null || die "$t exited during the run"
    RSS_OF[$t]=$(peak_rss_kb "${PID_OF[$t]}")
done
UP_RSS=$(peak_rss_kb "$UPSTREAM_PID")
VERIFY_OK=null
BEHALF_STATUS=null
AUDIT_DURING=0
FETCH_STATUSES=null
if [[ -n $BEHALF_PID ]]; then
    AUDIT_DURING=$(($(cat "$STATE"/audit/*.jsonl 2>/dev/null | wc -l) - AUDIT_BEFORE))
    kill -INT "$BEHALF_PID"
    for _ in $(seq 100); do
        kill -0 "$BEHALF_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$BEHALF_PID" 2>/dev/null || true
    BEHALF_STATUS=0
    wait "$BEHALF_PID" || BEHALF_STATUS=$?
    if bh audit verify >"$RESULTS/audit-verify.txt" 2>&1; then VERIFY_OK=true; else VERIFY_OK=false; fi
    cp "$WORK/behalf.err" "$RESULTS/behalf.stderr"
    # tool-fetch's API answer is 200 whatever the upstream said (the tool returns its status),
    # so the upstream's answers come from the audit log: every call to the weather origin
    # (probe, warm-up and load) by status; anything but 200 fails the report.
    if wants tool-fetch; then
        FETCH_STATUSES=$(cat "$STATE"/audit/*.jsonl | python3 -c '
import collections, json, sys
n = collections.Counter(str(r["status"]) for r in map(json.loads, sys.stdin)
                        if r["origin"] == sys.argv[1] and r["decision"] != "start")
print(json.dumps(dict(n)))' "$WEATHER_ORIGIN")
    fi
fi

version() {
    case $1 in
    direct) echo "bench_upstream (examples/bench_upstream.rs)" ;;
    direct-tls) echo "$(nginx -v 2>&1 | head -n 1 | sed 's/^nginx version: //') (TLS) + bench_upstream" ;;
    behalf | behalf-tls | tool-echo | tool-fetch) echo "behalf $(git -C "$ROOT" describe --always --dirty 2>/dev/null)" ;;
    wasmtime-echo) echo "$(wasmtime --version) serve, fixtures/bench/http_echo" ;;
    nginx) nginx -v 2>&1 | head -n 1 | sed 's/^nginx version: //' ;;
    squid-tls) squid -v | head -n 1 ;;
    mitmproxy-tls) mitmdump --version | head -n 1 ;;
    haproxy) haproxy -v | head -n 1 | cut -d' ' -f1-3 ;;
    squid) squid -v | head -n 1 ;;
    tinyproxy) tinyproxy -v | head -n 1 ;;
    mitmproxy) mitmdump --version | head -n 1 ;;
    esac
}
{
    printf '{\n'
    printf '  "date_utc": "%s",\n  "end_utc": "%s",\n' "$START" "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '  "cpus": %s,\n' "$(nproc)"
    printf '  "cpu_model": "%s",\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
    printf '  "kernel": "%s",\n' "$(uname -r)"
    printf '  "loadavg_before": "%s",\n  "loadavg_after": "%s",\n' "$LOAD_BEFORE" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf '  "oha": "%s",\n' "$OHA_VERSION"
    printf '  "duration": "%s", "warmup": "%s", "connections": %s, "rounds": %s, "fixed_rate": %s,\n' \
        "$DURATION" "$WARMUP" "$CONNS" "$ROUNDS" "$RATE"
    printf '  "tool_connections": %s, "tool_fixed_rate": %s,\n' "$TOOL_CONNS" "$TOOL_RATE"
    printf '  "clock_ticks_per_s": %s,\n' "$TICKS"
    printf '  "targets": ['
    sep=
    for t in "${TARGET_LIST[@]}"; do
        printf '%s\n    {"name": "%s", "version": "%s", "peak_rss_kib": %s, "idle_rss_kib": %s}' "$sep" "$t" \
            "$(version "$t")" "$([[ $t == direct* ]] && echo null || echo "${RSS_OF[$t]}")" \
            "$([[ $t == direct* ]] && echo null || echo "${IDLE_RSS_OF[$t]}")"
        sep=,
    done
    printf '\n  ],\n'
    printf '  "upstream_peak_rss_kib": %s,\n' "$UP_RSS"
    printf '  "behalf_audit_records_during_load": %s,\n' "$AUDIT_DURING"
    printf '  "behalf_audit_verify_ok": %s,\n' "$VERIFY_OK"
    printf '  "tool_fetch_upstream_statuses": %s,\n' "$FETCH_STATUSES"
    printf '  "behalf_exit_status": %s\n' "$BEHALF_STATUS"
    printf '}\n'
} >"$RESULTS/meta.json"

if [[ $SOAK != 0 ]]; then
    python3 "$ROOT/benches/soak_report.py" "$RESULTS" "$OUT" | tee "$RESULTS/summary.txt"
else
    python3 "$ROOT/benches/compare_report.py" "$RESULTS" "$OUT" | tee "$RESULTS/summary.txt"
fi
