"""The one kubelet endpoint the agent serves: container logs, so `kubectl logs` works.

The API server proxies `kubectl logs` to the node's kubelet port (Node
status.daemonEndpoints.kubeletEndpoint) over HTTPS. This serves
`GET /containerLogs/<namespace>/<pod>/<container>` (with `tailLines`, `limitBytes` and
`follow`) from the agent's per-container log files, on 127.0.0.1 only.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

log = logging.getLogger(__name__)

_PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)$")

#: (namespace, pod, container) -> the log file, or None when the agent has none.
Locate = Callable[[str, str, str], Path | None]


def tail(data: bytes, lines: int) -> bytes:
    """The last `lines` lines of `data`."""
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


class LogServer:
    def __init__(self, locate: Locate, cert: Path, key: Path, port: int = 0) -> None:
        self.locate = locate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                match = _PATH.match(url.path)
                if match is None:
                    self._plain(404, "only /containerLogs is served by the local node agent\n")
                    return
                path = server.locate(*match.groups())
                if path is None or not path.exists():
                    self._plain(404, f"no logs for {'/'.join(match.groups())}\n")
                    return
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                data = path.read_bytes()
                if "tailLines" in query:
                    data = tail(data, int(query["tailLines"]))
                if "limitBytes" in query:
                    data = data[: int(query["limitBytes"])]
                follow = query.get("follow") == "true"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                if not follow:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                if follow:
                    self._follow(path, path.stat().st_size)

            def _follow(self, path: Path, offset: int) -> None:
                try:
                    while not server.stopping.is_set() and path.exists():
                        with path.open("rb") as handle:
                            handle.seek(offset)
                            chunk = handle.read()
                        if chunk:
                            offset += len(chunk)
                            self.wfile.write(chunk)
                            self.wfile.flush()
                        time.sleep(0.5)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    return

            def _plain(self, status: int, text: str) -> None:
                body = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("logs: " + format, *args)

        return Handler

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="log-server", daemon=True).start()
        log.info("container logs served on 127.0.0.1:%d", self.port)

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
