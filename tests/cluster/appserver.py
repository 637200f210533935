"""A tiny HTTP app the cluster tests run as a pod on the local node (image batchpilot/python).

GET /ready  200 once started (503 before --ready-after seconds have passed)
GET /file?path=P  the content of file P (404 when missing)
GET /env?name=N   the value of environment variable N
GET /pid          this process's PID
GET /kube?path=P  the HTTP status of GET P on the API server, with the pod's own kubeconfig
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from batchpilot_localcluster.kubeapi import ApiError, KubeAPI


def kube_status(path: str) -> int:
    """GET `path` with the credentials in $KUBECONFIG; the HTTP status it got."""
    api = KubeAPI.from_kubeconfig(Path(os.environ["KUBECONFIG"]))
    try:
        api.get(path)
    except ApiError as error:
        return error.status
    finally:
        api.close()
    return 200


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=0.0)
    args = parser.parse_args()
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            status, body = 404, "not found"
            if url.path == "/ready":
                ok = time.monotonic() - started >= args.ready_after
                status, body = (200, "ok") if ok else (503, "starting")
            elif url.path == "/file":
                path = Path(query.get("path", ""))
                if path.is_file():
                    status, body = 200, path.read_text()
            elif url.path == "/env":
                status, body = 200, json.dumps(os.environ.get(query.get("name", "")))
            elif url.path == "/pid":
                status, body = 200, str(os.getpid())
            elif url.path == "/kube":
                status, body = 200, str(kube_status(query.get("path", "/")))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving on {args.host}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
