"""Faults to inject into the local cluster: for the fault tests and benchmarks.

- :func:`pod_process` finds the process that runs a pod's container on the local node (from
  the node agent's process registry), and :func:`signal_pod` sends it a signal: SIGSTOP and
  SIGCONT to pause and resume it (a pod that stops answering), SIGKILL to crash it.
- :func:`restart_api_server` stops kube-apiserver and etcd and starts them again with the
  same command lines, data directory and logs: the API is gone for a while and comes back
  with its data, as after a control-plane crash or upgrade. The controller manager and the
  scheduler go down and come back with them: each exits once it cannot renew its leader
  lease, and a supervisor would start it again. kwok, the node agent and the operator keep
  running and must reconnect on their own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.processes import pid_alive
from batchpilot_localcluster.waits import wait_for

API_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
"""What :func:`restart_api_server` restarts, in start order (stopped in reverse)."""
STOP_SIGNALS = {"kube-apiserver": signal.SIGKILL}
"""The others stop cleanly on SIGTERM in a second or two; kube-apiserver's graceful shutdown
waits on its long-lived watches for over a minute, so it is killed, as in a crash."""


class FaultError(RuntimeError):
    """A fault could not be injected (no such process, a component that did not restart)."""


# ----------------------------------------------------------------------------- pod processes


def pod_process(cluster: LocalCluster, namespace: str, pod: str, container: str = "") -> int:
    """The PID of the running process of ``pod``'s container (its only one if ``container``
    is empty). The node agent starts each in its own process group, led by this PID."""
    registry = cluster.layout.agent_dir / "processes.json"
    try:
        entries = json.loads(registry.read_text())
    except (OSError, ValueError) as error:
        raise FaultError(f"cannot read the node agent's processes: {error}") from error
    found = [
        int(pid)
        for pid, info in entries.items()
        if info.get("owner") == f"{namespace}/{pod}"
        and (not container or info.get("container") == container)
        and pid_alive(int(pid))
    ]
    if len(found) != 1:
        raise FaultError(f"{len(found)} running processes for pod {namespace}/{pod}: {found}")
    return found[0]


def signal_pod(
    cluster: LocalCluster, namespace: str, pod: str, sig: signal.Signals, container: str = ""
) -> int:
    """Send ``sig`` to the process group of ``pod``'s container; its PID."""
    pid = pod_process(cluster, namespace, pod, container)
    os.killpg(pid, sig)
    return pid


# ----------------------------------------------------------------------------- control plane


@dataclass(frozen=True)
class Component:
    """A running control-plane process, as kwokctl started it."""

    name: str
    pid: int
    argv: list[str]
    env: dict[str, str]
    cwd: str

    @property
    def pid_file(self) -> Path:
        return Path(self.cwd) / "pids" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return Path(self.cwd) / "logs" / f"{self.name}.log"


def _component(cluster: LocalCluster, name: str) -> Component:
    pid_file = cluster.layout.kwok_cluster_dir / "pids" / f"{name}.pid"
    try:
        pid = int(pid_file.read_text().strip())
        proc = Path(f"/proc/{pid}")
        argv = [a.decode() for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
        raw_env = (proc / "environ").read_bytes().split(b"\0")
        cwd = os.readlink(proc / "cwd")
    except (OSError, ValueError) as error:
        raise FaultError(f"{name} is not running: {error}") from error
    env = dict(e.decode().partition("=")[::2] for e in raw_env if b"=" in e)
    if os.path.realpath(cwd) != os.path.realpath(cluster.layout.kwok_cluster_dir):
        raise FaultError(f"pid {pid} from {pid_file} is not this cluster's {name}")
    return Component(name, pid, argv, env, cwd)


def _start(component: Component) -> int:
    """Start ``component`` again in the background, in its own session, with its log
    appended; a shell starts it and exits, so no child of ours outlives it as a zombie."""
    script = 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    result = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(component.log_file), *component.argv],
        capture_output=True,
        text=True,
        env=component.env,
        cwd=component.cwd,
        check=True,
        start_new_session=True,
    )
    pid = int(result.stdout.strip())
    component.pid_file.write_text(f"{pid}\n")  # kwokctl and `down` stop it by this file
    return pid


def _stop(component: Component, grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(component.pid, STOP_SIGNALS.get(component.name, signal.SIGTERM))
    try:
        wait_for(lambda: not pid_alive(component.pid), timeout=grace, interval=0.1,
                 what=f"{component.name} to exit")  # fmt: skip
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(component.pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(component.pid), timeout=10, interval=0.1,
                 what=f"{component.name} to exit after SIGKILL")  # fmt: skip


def restart_api_server(
    cluster: LocalCluster, *, down_s: float = 3.0, grace: float = 20.0, timeout: float = 120.0
) -> float:
    """Stop kube-apiserver and etcd (:data:`STOP_SIGNALS`, SIGKILL after ``grace``) with the
    components that lead through a lease (:data:`API_COMPONENTS`), keep them down ``down_s``
    seconds, start them again and wait until the API answers /readyz.
    Returns the seconds the API was unreachable (from the stop to ready)."""
    components = [_component(cluster, name) for name in API_COMPONENTS]
    stopped_at = time.monotonic()
    for component in reversed(components):
        _stop(component, grace)
    time.sleep(down_s)
    for component in components:
        _start(component)
    cluster.close()  # its pooled connections went with the old server
    wait_for(cluster.api_healthy, timeout=timeout, interval=0.5,
             what="kube-apiserver /readyz after the restart")  # fmt: skip
    return time.monotonic() - stopped_at
