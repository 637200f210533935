"""Readiness, liveness and startup probes against a pod's loopback address.

httpGet (status 200-399 succeeds) and tcpSocket (a connection succeeds) run as kubelet runs
them; exec runs the command locally with the container's environment. Thresholds, period,
initial delay and timeout follow the Kubernetes defaults.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Probe:
    kind: str  # "http", "tcp" or "exec"
    host: str
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    command: tuple[str, ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3


def resolve_port(port: Any, container: JSON) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"probe port {port!r} names no port of container {container.get('name')!r}")


def parse_probe(spec: JSON | None, container: JSON, pod_ip: str) -> Probe | None:
    """The probe a container spec declares, aimed at the pod's address; None if none."""
    if not spec:
        return None
    base = Probe(
        "tcp",
        pod_ip,
        initial_delay=float(spec.get("initialDelaySeconds", 0)),
        period=float(spec.get("periodSeconds", 10)),
        timeout=float(spec.get("timeoutSeconds", 1)),
        success_threshold=int(spec.get("successThreshold", 1)),
        failure_threshold=int(spec.get("failureThreshold", 3)),
    )
    if "httpGet" in spec:
        get = spec["httpGet"]
        return replace(
            base,
            kind="http",
            host=get.get("host") or pod_ip,
            port=resolve_port(get["port"], container),
            path=get.get("path", "/"),
            scheme=get.get("scheme", "HTTP"),
            headers=tuple((h["name"], h["value"]) for h in get.get("httpHeaders") or []),
        )
    if "tcpSocket" in spec:
        sock = spec["tcpSocket"]
        return replace(
            base, host=sock.get("host") or pod_ip, port=resolve_port(sock["port"], container)
        )
    if "exec" in spec:
        return replace(
            base, kind="exec", command=tuple(str(c) for c in spec["exec"].get("command") or [])
        )
    if "grpc" in spec:
        return replace(base, port=int(spec["grpc"]["port"]))
    raise ValueError(f"unsupported probe handler: {sorted(spec)}")


def check(
    probe: Probe, env: Mapping[str, str] | None = None, cwd: str | None = None
) -> tuple[bool, str]:
    """Run a probe once: (succeeded, what happened)."""
    if probe.host and not probe.host.startswith("127.") and probe.host != "localhost":
        return False, f"probe host {probe.host} is outside 127.0.0.0/8; refused"
    try:
        if probe.kind == "http":
            return _http(probe)
        if probe.kind == "tcp":
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
                return True, "connected"
        return _exec(probe.command, env, cwd, probe.timeout)
    except (OSError, http.client.HTTPException, subprocess.SubprocessError) as error:
        return False, f"{type(error).__name__}: {error}"


def _http(probe: Probe) -> tuple[bool, str]:
    connection_type = (
        http.client.HTTPSConnection
        if probe.scheme.upper() == "HTTPS"
        else http.client.HTTPConnection
    )
    connection = connection_type(probe.host, probe.port, timeout=probe.timeout)
    try:
        connection.request("GET", probe.path, headers=dict(probe.headers))
        response = connection.getresponse()
        response.read(1024)
        ok = 200 <= response.status < 400
        return ok, f"HTTP probe failed with statuscode: {response.status}" if not ok else "ok"
    finally:
        connection.close()


def _exec(
    command: Sequence[str], env: Mapping[str, str] | None, cwd: str | None, timeout: float
) -> tuple[bool, str]:
    if not command:
        return False, "exec probe without a command"
    result = subprocess.run(
        list(command),
        env=dict(env) if env is not None else None,
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode == 0, f"exit code {result.returncode}"


@dataclass
class ProbeTracker:
    """Turns single probe results into a state, with thresholds and timing."""

    probe: Probe
    started_at: float
    initial: bool = False
    healthy: bool = field(init=False)
    successes: int = 0
    failures: int = 0
    next_at: float = field(init=False)
    last_message: str = ""

    def __post_init__(self) -> None:
        self.healthy = self.initial
        self.next_at = self.started_at + self.probe.initial_delay

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, message: str, now: float) -> bool:
        """Account for one result; return True when the state flipped."""
        self.next_at = now + self.probe.period
        self.last_message = message
        before = self.healthy
        if ok:
            self.successes, self.failures = self.successes + 1, 0
            if self.successes >= self.probe.success_threshold:
                self.healthy = True
        else:
            self.successes, self.failures = 0, self.failures + 1
            if self.failures >= self.probe.failure_threshold:
                self.healthy = False
        return before != self.healthy
