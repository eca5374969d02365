"""Container health check for each m3edge role; exit status 0 = healthy (Docker's HEALTHCHECK contract).

    healthcheck.py readyz        GET http://127.0.0.1:$M3EDGE_API_PORT/readyz answers 2xx (the api and serve roles)
    healthcheck.py dicom         the DICOM node beside $M3EDGE_HOME accepts associations (the scp role): the status it
                                 rewrites every 2 s in HOME/run/dicom-node.json is fresh and a receiving process is ready
    healthcheck.py tcp PORT      something accepts TCP connections on 127.0.0.1:PORT

Standard library only, so it runs in the image without curl.
"""

from __future__ import annotations

import json
import os
import socket
import time
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 5.0
STALE_AFTER_S = 10.0  # dicom_node.scp.status.STALE_AFTER_SECONDS


def readyz(port: int) -> str | None:
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (a fixed loopback URL)
            return None if 200 <= response.status < 300 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except OSError as exc:
        return f"{url} unreachable: {exc}"


def tcp(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S):
            return None
    except OSError as exc:
        return f"nothing accepts connections on 127.0.0.1:{port}: {exc}"


def dicom(home: str) -> str | None:
    path = os.path.join(home, "run", "dicom-node.json")
    try:
        with open(path, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError) as exc:
        return f"no DICOM node status in {path}: {exc}"
    if time.time() - float(status.get("updated_at", 0)) > STALE_AFTER_S:
        return f"the DICOM node has not reported for more than {STALE_AFTER_S:g} s"
    if int(status.get("receivers_ready", 0)) < 1:
        return "no receiving process accepts associations"
    return None


def main(argv: list[str]) -> int:
    check = argv[0] if argv else "readyz"
    if check == "readyz":
        problem = readyz(int(os.environ.get("M3EDGE_API_PORT", "8000")))
    elif check == "dicom":
        problem = dicom(os.environ.get("M3EDGE_HOME", "./var"))
    elif check == "tcp" and len(argv) == 2 and argv[1].isdigit():
        problem = tcp(int(argv[1]))
    else:
        print("usage: healthcheck.py readyz | dicom | tcp PORT", file=sys.stderr)
        return 2
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
