"""The operator as a local process that a test can kill at any moment.

:class:`OperatorProcess` runs ``python -m batchpilot_operator`` (or any entrypoint with the
same flags, such as a wrapper that injects a fault) with this interpreter and environment,
watching one namespace with the cluster's admin kubeconfig, and waits for its liveness
endpoint. :meth:`OperatorProcess.kill` sends SIGKILL (or another signal): no shutdown
handler runs, as when a node dies or the OOM killer strikes. This package does not import
the operator: it only starts it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.waits import wait_for

OPERATOR_MODULE = ("-m", "batchpilot_operator")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OperatorExitedError(RuntimeError):
    """The operator process ended while it was expected to run."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class OperatorProcess:
    """One operator process at a time for one namespace; :meth:`start` again after a kill
    for the next one (the same log, appended)."""

    def __init__(
        self,
        cluster: LocalCluster,
        namespace: str,
        log: Path,
        *,
        entrypoint: Sequence[str] = OPERATOR_MODULE,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.cluster, self.namespace, self.log_path = cluster, namespace, log
        self.entrypoint = list(entrypoint)
        self.extra_env = dict(env or {})
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self,
        *,
        entrypoint: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> None:
        """Start a process (``entrypoint`` and ``env`` override the constructor's for this
        one) and wait until its liveness endpoint answers."""
        if self.alive:
            raise RuntimeError("the operator is already running")
        self.port = free_port()
        full_env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            **self.extra_env,
            **(env or {}),
        }
        argv = [
            sys.executable,
            *(self.entrypoint if entrypoint is None else entrypoint),
            "--namespace", self.namespace,
            "--standalone",
            "--liveness", f"http://127.0.0.1:{self.port}/healthz",
        ]  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- starting: {' '.join(argv[1:])}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.health, timeout=timeout, what="the operator's liveness endpoint",
                 describe=lambda: self.log()[-2000:])  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the operator was never started")
        return self.proc.pid

    def health(self) -> dict[str, Any] | None:
        """The liveness report (None while it does not answer); raises if the process ended."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            raise OperatorExitedError(
                f"the operator exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
            )
        try:
            with _OPENER.open(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                data: dict[str, Any] = json.loads(response.read())
                return data
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the process to end; its exit code."""
        if self.proc is None:
            raise RuntimeError("the operator was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def stop(self, grace: float = 60.0) -> None:
        """SIGTERM (kopf's graceful shutdown), SIGKILL after ``grace`` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self) -> str:
        """Everything the processes started so far wrote."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
