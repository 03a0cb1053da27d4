"""mitmproxy addon for benches/compare.sh: set the credential on every request.

Run as: mitmdump -q --listen-host 127.0.0.1 --listen-port PORT -s mitmproxy_addon.py
--set connection_strategy=lazy, with BENCH_TOKEN in the environment (the token is not
templated into this file). The origin names are mapped to the bench upstreams the way behalf's
--connect-to does: BENCH_UPSTREAM=HOST:PORT for http://upstream.bench:8080 and, for the
CONNECT/interception target, BENCH_UPSTREAM_TLS=HOST:PORT for https://upstream.bench:8443.
"""

import os

TOKEN = os.environ["BENCH_TOKEN"]


def _addr(var):
    value = os.environ.get(var)
    if not value:
        return None
    host, port = value.rsplit(":", 1)
    return host, int(port)


ROUTES = {8080: _addr("BENCH_UPSTREAM"), 8443: _addr("BENCH_UPSTREAM_TLS")}


def request(flow):
    # Replaces whatever the caller sent: one Authorization header upstream.
    flow.request.headers["Authorization"] = "Bearer " + TOKEN
    if flow.request.host == "upstream.bench":
        route = ROUTES.get(flow.request.port)
        if route:
            port = flow.request.port
            flow.request.host, flow.request.port = route
            flow.request.headers["Host"] = f"upstream.bench:{port}"
