"""The runtime as a separate process on a loopback port, as a pod runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from bench.runtime import free_port


class ServerError(RuntimeError):
    """The runtime exited or never became ready; the message ends with its log."""


@dataclass
class Served:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    startup_seconds: float
    """Process start to ``/v2/health/ready`` 200: imports, model load, probe, warm-up."""

    def stats(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.url + "/stats", timeout=30).json()
        return body

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One ``/v1/embeddings`` request for all ``texts``; the vectors in input order."""
        response = httpx.post(self.url + "/v1/embeddings", json={"input": texts}, timeout=120)
        response.raise_for_status()
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        return [d["embedding"] for d in data]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextmanager
def runtime_server(
    model: Path,
    work: Path,
    *,
    name: str,
    dtype: str = "auto",
    device: str = "auto",
    batching: dict[str, Any] | None = None,
    threads: int | None = None,
    ready_timeout: float = 180.0,
) -> Iterator[Served]:
    """Start ``python -m batchpilot_runtime`` on ``model`` and wait until it is ready."""
    port = free_port()
    config = work / f"{name}.batching.json"
    config.write_text(json.dumps(batching or {}))
    log = work / f"{name}.log"
    cmd = [
        sys.executable, "-m", "batchpilot_runtime", "--model", str(model), "--name", "model",
        "--host", "127.0.0.1", "--port", str(port), "--config", str(config),
        "--device", device, "--dtype", dtype, "--log-level", "info",
    ]  # fmt: skip
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise ServerError(f"runtime exited with {process.returncode}:\n{log_tail(log)}")
            try:
                if httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - started > ready_timeout:
                raise ServerError(
                    f"runtime not ready after {ready_timeout:.0f} s:\n{log_tail(log)}"
                )
            time.sleep(0.2)
        yield Served(url, process, log, time.monotonic() - started)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
