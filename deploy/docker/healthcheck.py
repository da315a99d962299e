"""Container health check: exit 0 when the service answers its readiness endpoint with 200.

The runtime images carry no curl or wget (less to patch, less to exploit), so Docker's HEALTHCHECK runs
this with the image's own Python, standard library only. Readiness, not liveness: Docker's "healthy"
gates `depends_on: condition: service_healthy` and load balancers, which must wait for warm-up.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def probe_url() -> str:
    # The server binds BERTSERVE_HOST (0.0.0.0 in the images); the check always dials loopback inside the
    # container, so it works whatever address the service listens on, as long as loopback is included.
    port = os.environ.get("BERTSERVE_PORT", "8000")
    path = os.environ.get("BERTSERVE_HEALTHCHECK_PATH", "/health/ready")
    return f"http://127.0.0.1:{port}{path}"


def main() -> int:
    url = probe_url()
    timeout = float(os.environ.get("BERTSERVE_HEALTHCHECK_TIMEOUT_S", "2"))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
