"""Running a non-wasm program for one user through behalf's forward proxy."""
import os
import subprocess
from urllib.parse import quote


def run_for_user(argv: list[str], token: str, ca_pem: str, *,
                 proxy: str = "127.0.0.1:7778", user: str | int | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs argv with its HTTP(S) sent through behalf as the user `token` identifies.

    The program is not sandboxed: give it its own uid (`user=`, which needs root or
    CAP_SETUID) that cannot read behalf's state directory, and let it reach the network only
    through the proxy. It gets a fresh environment, never the agent's own (which holds the
    agent's API keys).
    """
    proxy_url = f"http://u:{quote(token, safe='')}@{proxy}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HTTPS_PROXY": proxy_url, "https_proxy": proxy_url,
        "HTTP_PROXY": proxy_url, "http_proxy": proxy_url,
        "SSL_CERT_FILE": ca_pem,        # OpenSSL: Python ssl/urllib, httpx, git, Ruby
        "REQUESTS_CA_BUNDLE": ca_pem,   # Python requests
        "CURL_CA_BUNDLE": ca_pem,       # curl
        "NODE_EXTRA_CA_CERTS": ca_pem,  # Node.js (which also needs a proxy agent)
    }
    return subprocess.run(argv, env=env, user=user, capture_output=True, text=True,
                          timeout=timeout, check=True)
