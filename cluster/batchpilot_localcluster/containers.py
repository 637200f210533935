"""One container of a local pod: start, watch, probe, restart with backoff, stop.

The runner keeps the Kubernetes view of the container (state, lastState, restartCount, ready,
started) next to the process that plays it. `step()` advances it by one tick; the pod worker
calls it and publishes `status()`.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchpilot_localcluster.probes import ProbeTracker, check, parse_probe
from batchpilot_localcluster.processes import Process, ProcessRegistry, describe_exit

JSON = dict[str, Any]
log = logging.getLogger(__name__)

#: How soon a container that could not start (image, config) is tried again.
RETRY_SECONDS = 1.0


def rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


@dataclass(frozen=True)
class Launch:
    """Everything needed to start the process, or why it cannot start."""

    argv: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    waiting_reason: str = ""
    waiting_message: str = ""


@dataclass
class Backoff:
    base: float = 2.0
    limit: float = 60.0


class ContainerRunner:
    def __init__(
        self,
        spec: JSON,
        *,
        restart_policy: str,
        log_path: Path,
        registry: ProcessRegistry,
        owner: str,
        backoff: Backoff,
        previous: JSON | None = None,
    ) -> None:
        self.spec = spec
        self.name = str(spec["name"])
        self.image = str(spec.get("image", ""))
        self.restart_policy = restart_policy
        self.log_path = log_path
        self.registry = registry
        self.owner = owner
        self.backoff = backoff
        self.process: Process | None = None
        self.env: Mapping[str, str] = {}
        self.cwd: Path | None = None
        previous = previous or {}
        self.restart_count = int(previous.get("restartCount", 0))
        # An agent restart is a container restart: a container that ran before runs again.
        self.has_run = bool(previous.get("state", {}).get("running") or previous.get("lastState"))
        self.state: JSON = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: JSON = dict(previous.get("lastState") or {})
        self.ready = False
        self.started = False
        self.done = False
        self.delay = 0.0
        self.not_before = 0.0
        self.readiness: ProbeTracker | None = None
        self.liveness: ProbeTracker | None = None
        self.startup: ProbeTracker | None = None
        self.last_pid: int | None = None

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def succeeded(self) -> bool:
        return self.done and self.state.get("terminated", {}).get("exitCode") == 0

    def wait(self, reason: str, message: str) -> None:
        if not self.running:
            self.state = {"waiting": {"reason": reason, "message": message}}

    def status(self) -> JSON:
        status: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.last_pid is not None:
            status["containerID"] = f"process://{self.last_pid}"
        return status

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, launch: Launch, pod_ip: str, now: float) -> None:
        assert launch.env is not None
        assert launch.cwd is not None
        if self.has_run:
            self.restart_count += 1
        self.process = Process(launch.argv, launch.env, launch.cwd, self.log_path)
        self.registry.add(self.process.pid, owner=self.owner, container=self.name)
        self.has_run = True
        self.last_pid = self.process.pid
        self.env, self.cwd = launch.env, launch.cwd
        self.state = {"running": {"startedAt": rfc3339(self.process.started_at)}}
        self.ready = False
        self.readiness = self._tracker("readinessProbe", pod_ip, now, initial=False)
        self.liveness = self._tracker("livenessProbe", pod_ip, now, initial=True)
        self.startup = self._tracker("startupProbe", pod_ip, now, initial=False)
        self.started = self.startup is None
        log.info("%s/%s started pid %d: %s", self.owner, self.name, self.process.pid, launch.argv)

    def _tracker(self, key: str, pod_ip: str, now: float, *, initial: bool) -> ProbeTracker | None:
        probe = parse_probe(self.spec.get(key), self.spec, pod_ip)
        return None if probe is None else ProbeTracker(probe, now, initial=initial)

    def _exited(self, code: int, now: float, message: str = "") -> None:
        assert self.process is not None
        reason, exit_code = describe_exit(code)
        self.registry.remove(self.process.pid)
        terminated: JSON = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": rfc3339(self.process.started_at),
            "finishedAt": rfc3339(now),
            "containerID": f"process://{self.process.pid}",
        }
        if message:
            terminated["message"] = message
        ran_for = now - self.process.started_at
        self.process = None
        self.ready, self.started = False, False
        restart = self.restart_policy == "Always" or (
            self.restart_policy == "OnFailure" and exit_code != 0
        )
        if not restart:
            self.state, self.done = {"terminated": terminated}, True
            return
        self.last_state = {"terminated": terminated}
        self.delay = (
            self.backoff.base
            if ran_for > self.backoff.limit or not self.delay
            else min(self.delay * 2, self.backoff.limit)
        )
        self.not_before = now + self.delay
        self.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {self.delay:.0f}s restarting failed container={self.name}",
            }
        }
        log.info(
            "%s/%s exited %d, restarting in %.0fs", self.owner, self.name, exit_code, self.delay
        )

    def step(self, now: float, pod_ip: str, launch: Callable[[JSON], Launch], grace: float) -> bool:
        """Advance one tick; True when the visible status may have changed."""
        if self.done:
            return False
        if self.process is None:
            if now < self.not_before:
                return False
            plan = launch(self.spec)
            if plan.waiting_reason:
                self.not_before = now + RETRY_SECONDS
                before = self.state
                self.wait(plan.waiting_reason, plan.waiting_message)
                return before != self.state
            self.start(plan, pod_ip, now)
            return True
        code = self.process.poll()
        if code is not None:
            self._exited(code, now)
            return True
        return self._probe(now, grace)

    def _probe(self, now: float, grace: float) -> bool:
        changed = False
        if self.startup is not None and not self.started and self.startup.due(now):
            ok, message = check(self.startup.probe, self.env, str(self.cwd))
            self.startup.record(ok, message, now)
            if self.startup.healthy:
                self.started, changed = True, True
            elif self.startup.failures >= self.startup.probe.failure_threshold:
                return self._kill_unhealthy(now, grace, f"Startup probe failed: {message}")
        if not self.started:
            return changed
        if self.liveness is not None and self.liveness.due(now):
            ok, message = check(self.liveness.probe, self.env, str(self.cwd))
            self.liveness.record(ok, message, now)
            if not self.liveness.healthy:
                return self._kill_unhealthy(now, grace, f"Liveness probe failed: {message}")
        if self.readiness is None:
            changed = changed or not self.ready
            self.ready = True
        elif self.readiness.due(now):
            ok, message = check(self.readiness.probe, self.env, str(self.cwd))
            if self.readiness.record(ok, message, now):
                self.ready = self.readiness.healthy
                changed = True
        return changed

    def _kill_unhealthy(self, now: float, grace: float, message: str) -> bool:
        assert self.process is not None
        log.info("%s/%s %s; killing it", self.owner, self.name, message)
        code = self.process.stop(grace)
        self._exited(code, time.time(), message)
        return True

    def signal_stop(self) -> None:
        """Send SIGTERM without waiting (pod deletion stops every container at once)."""
        if self.process is not None and self.process.running:
            self.process.signal_group(signal.SIGTERM)

    def stop(self, grace: float) -> None:
        """Stop the process (SIGTERM, grace, SIGKILL) and record it as terminated."""
        if self.process is None:
            self.done = True
            return
        code = self.process.stop(grace)
        self.registry.remove(self.process.pid)
        reason, exit_code = describe_exit(code)
        self.state = {
            "terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "startedAt": rfc3339(self.process.started_at),
                "finishedAt": rfc3339(time.time()),
                "containerID": f"process://{self.process.pid}",
            }
        }
        self.process, self.ready, self.done = None, False, True
