"""The runtime process around its lifecycle: stalled uploads, SIGTERM, the drain, and SIGTERM
during the model load, over real sockets.

These run the real console script, mostly on the emulated accelerator (no torch, a 6 s load),
so they exercise uvicorn and the signal handling as a pod does.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from runtime_server import Server, free_port, run_server

EMULATED = ("--model", "emulated://minilm-l6-datacenter-gpu", "--name", "minilm")
EXIT_TIMEOUT = 60.0
"""Only a bound on the test: a runtime that needs this long has not exited at all."""


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


@contextmanager
def stalled_upload(server: Server, path: str = "/v1/embeddings") -> Iterator[socket.socket]:
    """A connection whose request body stops after its first bytes, once the app reads it.

    ``Expect: 100-continue`` makes the server answer ``100 Continue`` when the app starts
    reading the body, so the upload is known to be in the app's hands before it stalls.
    """
    body = json.dumps({"input": ["one", "two"]}).encode()
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=EXIT_TIMEOUT)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: runtime\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 100 ")
        sock.sendall(body[:10])
        yield sock
    finally:
        sock.close()


def read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_to_close(sock: socket.socket) -> bytes:
    return read_until(sock, b"\x00never\x00")


def test_a_stalled_upload_is_answered_408_and_the_connection_closed(tmp_path: Path) -> None:
    with run_server(tmp_path, *EMULATED, env={"BATCHPILOT_BODY_TIMEOUT": "0.5"}) as server:
        with stalled_upload(server) as sock:
            answer = read_to_close(sock)  # returns only once the server closes the connection
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in head.lower()
        assert json.loads(body)["error"]["param"] == "body"
        assert server.metrics()['batchpilot_requests_total{outcome="cancelled"}'] == 1


def test_sigterm_exits_within_the_graceful_bound_despite_a_stalled_upload(tmp_path: Path) -> None:
    # A body timeout far longer than the test: only the graceful bound can end the upload.
    env = {"BATCHPILOT_BODY_TIMEOUT": "3600", "BATCHPILOT_GRACEFUL_TIMEOUT": "1"}
    with run_server(tmp_path, *EMULATED, env=env) as server, stalled_upload(server) as sock:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=EXIT_TIMEOUT) == 0
        # Cut by the bound, the upload is still answered, and nothing went wrong in the app.
        assert read_to_close(sock).startswith(b"HTTP/1.1 503 ")
    assert "Exception in ASGI application" not in server.log.read_text()


def test_after_sigterm_the_runtime_turns_unready_and_still_serves_for_the_drain_delay(
    tmp_path: Path,
) -> None:
    # A drain delay longer than the test; a second SIGTERM ends it.
    with run_server(tmp_path, *EMULATED, env={"BATCHPILOT_DRAIN_DELAY": "3600"}) as server:
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while httpx.get(server.url + "/v2/health/ready").status_code == 200:
            assert time.monotonic() < deadline, "readiness never turned false"
            time.sleep(0.05)
        # A second on, well past uvicorn's 0.1 s tick that would have acted on a plain exit,
        # new connections are still accepted and requests answered as usual.
        time.sleep(1.0)
        with httpx.Client(base_url=server.url) as client:
            response = client.post("/v1/embeddings", json={"input": ["still served"]})
        assert response.status_code == 200, response.text
        assert httpx.get(server.url + "/stats").json()["draining"] is True
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=EXIT_TIMEOUT) == 0


STUCK_LOAD = """
import sys, threading
from batchpilot_runtime.__main__ import serve
from batchpilot_runtime.settings import parse_settings

def load():
    threading.Event().wait()  # a load that never ends, as from storage that hangs

sys.exit(serve(parse_settings(sys.argv[1:]), load))
"""


def test_sigterm_during_the_model_load_exits_without_waiting_for_it(tmp_path: Path) -> None:
    # The runtime's own serve() with a loader that never returns: only an exit that does not
    # wait for the load thread ends at all.
    port = free_port()
    log = tmp_path / "runtime.log"
    args = ["--model", "/models/stuck", "--config", str(tmp_path / "batching.json")]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", STUCK_LOAD, *args], stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + EXIT_TIMEOUT
        while not live(url):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert httpx.get(url + "/v2/health/ready").status_code == 503  # still loading
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=EXIT_TIMEOUT) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def live(url: str) -> bool:
    try:
        return httpx.get(url + "/v2/health/live", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
