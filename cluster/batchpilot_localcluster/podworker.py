"""One pod on the local node: a thread that plays kubelet's pod worker for it.

It gives the pod an address, writes its volumes and kubeconfig, runs its init containers then
its containers through ContainerRunner, refreshes volumes when the pod changes and every sync
period, publishes status when it changes, and on deletion stops the processes (SIGTERM, grace,
SIGKILL) and removes the pod from the API.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchpilot_contract.pod import HOST_ENV
from batchpilot_localcluster.containers import Backoff, ContainerRunner, Launch, rfc3339
from batchpilot_localcluster.images import ImageMap, resolve_executable, scripts_dir
from batchpilot_localcluster.ipam import IPAllocator, ports_free
from batchpilot_localcluster.kubeapi import UNREACHABLE, ApiError, KubeAPI
from batchpilot_localcluster.podspec import (
    ContainerConfigError,
    container_argv,
    container_env,
    localize,
)
from batchpilot_localcluster.podstatus import pod_status
from batchpilot_localcluster.processes import ProcessRegistry
from batchpilot_localcluster.tokens import TokenCache, sync_pod_kubeconfig
from batchpilot_localcluster.volumes import VolumeContext, container_mounts, sync_volumes

JSON = dict[str, Any]
log = logging.getLogger(__name__)

#: Environment of the agent that pods never inherit: they get their own credentials.
HIDDEN_ENV = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")
TICK = 0.25


class ApiLookup:
    """ConfigMaps and Secrets read straight from the API server."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api

    def configmap(self, namespace: str, name: str) -> JSON | None:
        return self.api.get_or_none(f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def secret(self, namespace: str, name: str) -> JSON | None:
        return self.api.get_or_none(f"/api/v1/namespaces/{namespace}/secrets/{name}")


@dataclass
class AgentContext:
    """What every pod worker shares."""

    api: KubeAPI
    node_name: str
    host_ip: str
    ipam: IPAllocator
    images: ImageMap
    tokens: TokenCache
    registry: ProcessRegistry
    state_dir: Path
    sync_period: float = 30.0
    backoff: Backoff = field(default_factory=Backoff)
    base_env: dict[str, str] = field(default_factory=dict)

    @property
    def pods_dir(self) -> Path:
        return self.state_dir / "pods"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def claims_dir(self) -> Path:
        return self.state_dir / "claims"


def base_environment() -> dict[str, str]:
    """The agent's environment minus its credentials, with this venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in HIDDEN_ENV}
    env["PATH"] = os.pathsep.join([str(scripts_dir()), env.get("PATH", "/usr/bin:/bin")])
    return env


def pod_key(pod: JSON) -> str:
    meta = pod["metadata"]
    return f"{meta['namespace']}_{meta['name']}_{meta['uid']}"


def _sync_trigger(pod: JSON) -> tuple[Any, ...]:
    """What, when it changes, makes the worker resync volumes at once (kubelet: pod update)."""
    meta = pod.get("metadata", {})
    return (
        meta.get("generation"),
        tuple(sorted((meta.get("annotations") or {}).items())),
        tuple(sorted((meta.get("labels") or {}).items())),
    )


class PodWorker(threading.Thread):
    def __init__(self, ctx: AgentContext, pod: JSON) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.ctx = ctx
        self.uid = str(meta["uid"])
        self.namespace = str(meta["namespace"])
        self.pod_name = str(meta["name"])
        self.key = pod_key(pod)
        self.pod_dir = ctx.pods_dir / self.key
        self._pod: JSON | None = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.finished = threading.Event()
        self.pod_ip = ""
        self.pushed: JSON | None = None
        self.transitions: dict[str, tuple[str, str]] = {}
        self.trigger = _sync_trigger(pod)
        self.next_sync = 0.0
        self.volumes: dict[str, Path] | None = None
        self.config_error = ""
        self.kubeconfig: Path | None = None
        spec = pod.get("spec", {})
        policy = str(spec.get("restartPolicy", "Always"))
        status = pod.get("status", {})
        previous = {s["name"]: s for s in status.get("containerStatuses") or []}
        previous.update({s["name"]: s for s in status.get("initContainerStatuses") or []})
        # Init containers with restartPolicy Always are sidecars: they run with the others.
        sidecars = [
            c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"
        ]
        plain_init = [
            c for c in spec.get("initContainers") or [] if c.get("restartPolicy") != "Always"
        ]
        init_policy = "Never" if policy == "Never" else "OnFailure"
        self.init = [self._runner(c, init_policy, previous) for c in plain_init]
        self.containers = [
            self._runner(c, policy, previous) for c in [*sidecars, *spec.get("containers", [])]
        ]
        self.terminal = status.get("phase") in ("Succeeded", "Failed")
        self.start_time = status.get("startTime") or rfc3339(time.time())

    def _runner(self, spec: JSON, policy: str, previous: dict[str, JSON]) -> ContainerRunner:
        return ContainerRunner(
            spec,
            restart_policy=policy,
            log_path=self.ctx.logs_dir / self.key / f"{spec['name']}.log",
            registry=self.ctx.registry,
            owner=f"{self.namespace}/{self.pod_name}",
            backoff=self.ctx.backoff,
            previous=previous.get(spec["name"]),
        )

    # -- inputs --------------------------------------------------------------------------

    def update(self, pod: JSON | None) -> None:
        """The latest pod from the watch (None: the pod is gone from the API)."""
        with self._lock:
            self._pod = pod
        self._wake.set()

    def shutdown(self) -> None:
        """The agent stops: stop the processes, leave the pod in the API."""
        self._stopping.set()
        self._wake.set()

    # -- loop ----------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod worker %s/%s failed", self.namespace, self.pod_name)
            self._stop_all(2.0)
        finally:
            self.finished.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(TICK)
            self._wake.clear()
            with self._lock:
                pod = self._pod
            if self._stopping.is_set():
                self._stop_all(5.0)
                return
            if pod is None:
                self._stop_all(30.0)
                self._cleanup()
                return
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(pod)
                return
            if self.terminal:
                continue
            self._tick(pod, time.time())

    def _tick(self, pod: JSON, now: float) -> None:
        if not self.pod_ip:
            ports = [
                int(port["containerPort"])
                for container in [*self.init, *self.containers]
                for port in container.spec.get("ports") or []
                if port.get("protocol", "TCP") == "TCP"
            ]
            self.pod_ip = self.ctx.ipam.allocate(self.uid, lambda ip: ports_free(ip, ports))
            self.pod_dir.mkdir(parents=True, exist_ok=True)
        trigger = _sync_trigger(pod)
        if trigger != self.trigger or now >= self.next_sync:
            self.trigger = trigger
            self._sync_volumes(pod, now)
        grace = float(pod.get("spec", {}).get("terminationGracePeriodSeconds", 30))
        launch = functools.partial(self._launch, pod)
        pending_init = next((c for c in self.init if not c.done), None)
        if pending_init is not None:
            pending_init.step(now, self.pod_ip, launch, grace)
        else:
            for runner in self.containers:
                runner.step(now, self.pod_ip, launch, grace)
        self._publish(pod)

    def _sync_volumes(self, pod: JSON, now: float) -> None:
        ctx = VolumeContext(
            pod=pod,
            pod_dir=self.pod_dir,
            pod_ip=self.pod_ip,
            host_ip=self.ctx.host_ip,
            lookup=ApiLookup(self.ctx.api),
            tokens=self.ctx.tokens,
            claims_dir=self.ctx.claims_dir,
        )
        try:
            self.volumes = sync_volumes(ctx)
            self.kubeconfig = sync_pod_kubeconfig(self.ctx.api, self.ctx.tokens, pod, self.pod_dir)
            self.config_error = ""
            self.next_sync = now + self.ctx.sync_period
        except (ContainerConfigError, ApiError) as error:
            self.config_error = str(error)
            self.next_sync = now + min(5.0, self.ctx.sync_period)
            log.warning("%s/%s: %s", self.namespace, self.pod_name, error)
        except UNREACHABLE as error:
            # The API server is away: keep the volumes as they are (running containers go
            # on), as the kubelet does, and try again soon.
            self.next_sync = now + min(5.0, self.ctx.sync_period)
            log.warning("%s/%s: volumes not refreshed: %s", self.namespace, self.pod_name, error)

    def _launch(self, pod: JSON, container: JSON) -> Launch:
        image = str(container.get("image", ""))
        entrypoint = self.ctx.images.entrypoint(image)
        if entrypoint is None:
            return Launch(
                waiting_reason="ImageNotRunnable",
                waiting_message=(
                    f'image "{image}" is not mapped to a local command on node '
                    f"{self.ctx.node_name} (known patterns: {self.ctx.images.describe()})"
                ),
            )
        if self.volumes is None or self.config_error:
            return Launch(
                waiting_reason="CreateContainerConfigError",
                waiting_message=self.config_error or "volumes not ready",
            )
        try:
            mounts = container_mounts(container, self.volumes)
            spec_env = container_env(
                pod,
                container,
                pod_ip=self.pod_ip,
                host_ip=self.ctx.host_ip,
                lookup=ApiLookup(self.ctx.api),
            )
        except (ContainerConfigError, ApiError) as error:
            return Launch(waiting_reason="CreateContainerConfigError", waiting_message=str(error))
        argv = [
            localize(part, mounts, self.pod_ip)
            for part in container_argv(entrypoint, container, spec_env)
        ]
        executable = resolve_executable(argv[0]) if argv else None
        if executable is None:
            return Launch(
                waiting_reason="ImageNotRunnable",
                waiting_message=f'image "{image}": command {argv[:1]} not found locally',
            )
        env = dict(self.ctx.base_env)
        env.update({"HOSTNAME": self.pod_name, HOST_ENV: self.pod_ip})
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        env.update({k: localize(v, mounts, self.pod_ip) for k, v in spec_env.items()})
        workdir = container.get("workingDir")
        cwd = (
            Path(localize(workdir, mounts, self.pod_ip))
            if workdir
            else self.pod_dir / "work" / container["name"]
        )
        return Launch(argv=[executable, *argv[1:]], env=env, cwd=cwd)

    # -- status --------------------------------------------------------------------------

    def _publish(self, pod: JSON) -> None:
        status = pod_status(
            pod,
            init=[c.status() for c in self.init],
            containers=[c.status() for c in self.containers],
            init_done=all(c.succeeded for c in self.init),
            init_failed=any(c.done and not c.succeeded for c in self.init),
            pod_ip=self.pod_ip,
            host_ip=self.ctx.host_ip,
            start_time=self.start_time,
            transitions=self.transitions,
            now=rfc3339(time.time()),
        )
        if status == self.pushed:
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}/status"
        try:
            # A merge patch replaces the lists (conditions, containerStatuses) as a whole.
            body = {"metadata": {"uid": self.uid}, "status": status}
            self.ctx.api.patch(path, body, patch_type="merge")
            self.pushed = status
            self.terminal = status["phase"] in ("Succeeded", "Failed")
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning("status of %s/%s: %s", self.namespace, self.pod_name, error)
        except UNREACHABLE as error:  # posted again on the next tick (status != pushed)
            log.warning("status of %s/%s: %s", self.namespace, self.pod_name, error)

    # -- endings -------------------------------------------------------------------------

    def _stop_all(self, grace: float) -> None:
        runners = [*self.init, *self.containers]
        for runner in runners:
            runner.signal_stop()
        deadline = time.monotonic() + grace
        for runner in runners:
            runner.stop(max(0.0, deadline - time.monotonic()))

    def _terminate(self, pod: JSON) -> None:
        meta = pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod.get("spec", {}).get("terminationGracePeriodSeconds", 30)
        log.info(
            "%s/%s deleted: stopping containers (grace %ss)", self.namespace, self.pod_name, grace
        )
        self._stop_all(float(grace))
        self._cleanup()
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.pod_name}"
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
        try:
            self.ctx.api.delete(path, body)
        except ApiError as error:
            if error.status not in (404, 409):
                log.warning("final delete of %s/%s: %s", self.namespace, self.pod_name, error)
        except UNREACHABLE as error:
            log.warning("final delete of %s/%s: %s", self.namespace, self.pod_name, error)

    def _cleanup(self) -> None:
        self.ctx.ipam.release(self.uid)
        self.ctx.tokens.forget(self.uid)
        shutil.rmtree(self.pod_dir, ignore_errors=True)
