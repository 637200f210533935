"""LocalCluster: start, reuse, inspect and stop the local control plane and its node agent.

Used by `batchpilot-cluster` (make cluster / cluster-down), the pytest fixtures and the demo.
State lives under $BATCHPILOT_HOME/cluster; the kubeconfig at $BATCHPILOT_HOME/cluster/kubeconfig.
What a running cluster offers its clients (kubectl, helm, the API, namespaces, pods) is
:class:`~batchpilot_localcluster.clusteraccess.ClusterAccess`, which LocalCluster extends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import yaml

from batchpilot_localcluster import kwokconfig
from batchpilot_localcluster.clusteraccess import JSON, ClusterAccess, ClusterError
from batchpilot_localcluster.images import scripts_dir
from batchpilot_localcluster.kubeapi import ApiError
from batchpilot_localcluster.modelcache import seed_minilm
from batchpilot_localcluster.nodeagent import DEFAULT_NODE_NAME
from batchpilot_localcluster.paths import BUILD_COMMAND, CLUSTER_NAME, Layout
from batchpilot_localcluster.processes import ProcessRegistry, pid_alive, spawn_detached
from batchpilot_localcluster.tokens import write_file_atomic
from batchpilot_localcluster.waits import wait_for

Log = Callable[[str], None]


class BinariesMissingError(ClusterError):
    """Some cluster binaries are not built yet."""


def _quiet(message: str) -> None:
    pass


class LocalCluster(ClusterAccess):
    """The local cluster under one $BATCHPILOT_HOME: start, reuse, inspect and stop it."""

    def __init__(
        self,
        layout: Layout | None = None,
        *,
        gpu_nodes: int = 2,
        gpus_per_node: int = 4,
        node_name: str = DEFAULT_NODE_NAME,
        agent_args: Sequence[str] = (),
    ) -> None:
        super().__init__(layout)
        self.gpu_nodes = gpu_nodes
        self.gpus_per_node = gpus_per_node
        self.node_name = node_name
        self.agent_args = list(agent_args)
        self._starting = False

    # -- state ---------------------------------------------------------------------------

    def check_binaries(self) -> None:
        missing = self.layout.missing_binaries()
        if missing:
            raise BinariesMissingError(
                f"cluster binaries missing in {self.bin}: {', '.join(missing)}. "
                f"Build them with `{BUILD_COMMAND}` (cold build: tens of minutes, then cached)."
            )

    def agent_pid(self) -> int | None:
        """The node agent's PID when it runs (checked against its command line)."""
        try:
            pid = int(self.layout.agent_pid.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            return None
        if b"nodeagent" not in cmdline and b"node-agent" not in cmdline:
            return None
        return pid

    def running(self) -> bool:
        return self.api_healthy() and self.agent_pid() is not None

    def versions(self) -> tuple[str, str]:
        """(kubernetes version, etcd version) of the built binaries."""
        kube = subprocess.run(
            [str(self.layout.binary("kube-apiserver")), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        etcd = subprocess.run(
            [str(self.layout.binary("etcd")), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        kube_match = re.search(r"v\d+\.\d+\.\d+\S*", kube)
        etcd_match = re.search(r"etcd Version:\s*(\S+)", etcd)
        if kube_match is None or etcd_match is None:
            raise ClusterError(f"cannot read versions from {kube!r} / {etcd!r}")
        return kube_match.group(0), etcd_match.group(1)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One `up` or `down` at a time, across processes."""
        self.state.mkdir(parents=True, exist_ok=True)
        with self.layout.lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- up ------------------------------------------------------------------------------

    def up(self, log: Log = _quiet) -> bool:
        """Start the cluster, or complete a running one. True when the control plane was started.

        A cluster started this way is the user's: test sessions that reuse it leave it running.
        """
        with self.locked():
            started = self._up(log)
            self._started_by_tests.unlink(missing_ok=True)
            return started

    def _up(self, log: Log) -> bool:
        self.check_binaries()
        started = self._starting = False
        if not self.api_healthy():
            if self.layout.kwok_cluster_dir.exists() or self.layout.agent_pid.exists():
                log("found a stopped or broken cluster; cleaning it up first")
                self._down(log)
            self._starting = True
            self._start_control_plane(log)
            started = True
        self._ensure_gpu_nodes(log)
        if self.agent_pid() is None:
            self._start_agent(log, fresh=started)
        self._wait_node_ready()
        return started

    @property
    def _started_by_tests(self) -> Path:
        return self.state / "started-by-tests"

    @contextlib.contextmanager
    def session(self, log: Log = _quiet) -> Iterator[bool]:
        """Use the cluster for a while (a test session); yields True when this call started it.

        Several sessions may share one cluster. A cluster that a session started is stopped
        when the last session using it ends, unless BATCHPILOT_KEEP_CLUSTER=1; a cluster started
        by `up` (make cluster) is never stopped by a session.
        """
        self.layout.sessions.mkdir(parents=True, exist_ok=True)
        token = self.layout.sessions / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with self.locked():
            try:
                started = self._up(log)
            except BaseException:
                if self._starting:  # half started by us: leave nothing running
                    self._down(log)
                raise
            if started:
                self._started_by_tests.touch()
            token.write_text(f"{os.getpid()}\n")
        try:
            yield started
        finally:
            with contextlib.suppress(ClusterError, ApiError, OSError):
                self.release_terminating_test_namespaces()
            with self.locked():
                token.unlink(missing_ok=True)
                keep_cluster = os.environ.get("BATCHPILOT_KEEP_CLUSTER", "") not in ("", "0")
                if (
                    self._started_by_tests.exists()
                    and not self._live_sessions()
                    and not keep_cluster
                ):
                    self._down(log)
                self.close()

    def _live_sessions(self) -> list[Path]:
        live = []
        for path in self.layout.sessions.glob("*"):
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                pid = -1
            if pid > 0 and pid_alive(pid):
                live.append(path)
            else:
                path.unlink(missing_ok=True)
        return live

    def _start_control_plane(self, log: Log) -> None:
        kube_version, etcd_version = self.versions()
        log(f"starting kube-apiserver {kube_version}, etcd {etcd_version} and kwok on 127.0.0.1")
        self.layout.kwok_workdir.mkdir(parents=True, exist_ok=True)
        documents = kwokconfig.kwokctl_configuration(
            self.bin,
            kube_version=kube_version,
            etcd_version=etcd_version,
            cache_dir=self.layout.kwok_workdir / "cache",
        )
        self.layout.kwokctl_config.write_text(kwokconfig.render(documents))
        self.close()
        self.kwokctl(
            "create",
            "cluster",
            "--name",
            CLUSTER_NAME,
            "--config",
            str(self.layout.kwokctl_config),
            "--runtime",
            "binary",
            "--kubeconfig",
            "",
            "--wait",
            "3m",
            "--timeout",
            "5m",
        )
        source = self.layout.kwok_cluster_dir / "kubeconfig.yaml"
        shutil.copyfile(source, self.kubeconfig)
        self.kubeconfig.chmod(0o600)
        wait_for(self.api_healthy, timeout=120, what="kube-apiserver /readyz")
        # Pods need their namespace's default ServiceAccount; it appears once controllers run.
        wait_for(
            lambda: self.api.get_or_none("/api/v1/namespaces/default/serviceaccounts/default"),
            timeout=120,
            what="the default ServiceAccount",
        )

    def _ensure_gpu_nodes(self, log: Log) -> None:
        for index in range(self.gpu_nodes):
            name = f"kwok-gpu-{index}"
            manifest = kwokconfig.gpu_node(name, gpus=self.gpus_per_node)
            if self.api.get_or_none(f"/api/v1/nodes/{name}") is None:
                self.api.create("/api/v1/nodes", manifest)
                log(f"added kwok node {name} with {self.gpus_per_node} nvidia.com/gpu")

    def _start_agent(self, log: Log, *, fresh: bool) -> None:
        agent_dir = self.layout.agent_dir
        ProcessRegistry(agent_dir / "processes.json").kill_all()
        if fresh and agent_dir.exists():
            for sub in ("pods", "logs", "claims"):
                shutil.rmtree(agent_dir / sub, ignore_errors=True)
        agent_dir.mkdir(parents=True, exist_ok=True)
        script = scripts_dir() / "batchpilot-node-agent"
        argv = (
            [str(script)]
            if script.exists()
            else [sys.executable, "-m", "batchpilot_localcluster.nodeagent"]
        )
        argv += [
            "--kubeconfig",
            str(self.kubeconfig),
            "--node-name",
            self.node_name,
            "--state-dir",
            str(agent_dir),
            "--image-map",
            str(self.layout.image_map),
            # kubectl logs: the API server reaches the agent's log server over TLS.
            "--tls-cert-file",
            str(self.layout.kwok_cluster_dir / "pki" / "admin.crt"),
            "--tls-private-key-file",
            str(self.layout.kwok_cluster_dir / "pki" / "admin.key"),
            *self.agent_args,
        ]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        # Pods resolve hf:// model URIs in the node's model cache (there is no hub here).
        env.setdefault("HF_HUB_CACHE", str(self.layout.model_cache))
        seed_minilm(Path(env["HF_HUB_CACHE"]))
        pid = spawn_detached(argv, self.layout.agent_log, env)
        self.layout.agent_pid.write_text(f"{pid}\n")
        log(f"started the node agent (pid {pid}, log {self.layout.agent_log})")

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            node = self.api.get_or_none(f"/api/v1/nodes/{self.node_name}")
            conditions = (node or {}).get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        def describe() -> str:
            tail = self.layout.agent_log.read_text(errors="replace")[-2000:]
            return f"agent log tail:\n{tail}"

        wait_for(ready, timeout=60, what=f"node {self.node_name} Ready", describe=describe)

    # -- down ----------------------------------------------------------------------------

    def down(self, log: Log = _quiet) -> None:
        """Stop the node agent, its pods and the control plane; leave no process behind."""
        with self.locked():
            self._down(log)

    def _down(self, log: Log) -> None:
        self._stop_agent(log)
        component_pids = self._component_pids()
        if self.layout.kwok_cluster_dir.exists() and os.access(
            self.layout.binary("kwokctl"), os.X_OK
        ):
            result = self.kwokctl("delete", "cluster", "--name", CLUSTER_NAME, check=False)
            if result.returncode != 0:
                log(f"kwokctl delete cluster: {result.stderr.strip()}")
        for pid in component_pids:
            if pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.layout.kwok_cluster_dir, ignore_errors=True)
        self.kubeconfig.unlink(missing_ok=True)
        self._started_by_tests.unlink(missing_ok=True)
        self.close()
        log("local cluster stopped")

    def _component_pids(self) -> list[int]:
        """PIDs of the control plane processes, from kwokctl's pid files (ours only)."""
        pids = []
        for path in (self.layout.kwok_cluster_dir / "pids").glob("*.pid"):
            try:
                pid = int(path.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if (
                str(self.bin).encode() in cmdline
                or str(self.layout.kwok_workdir).encode() in cmdline
            ):
                pids.append(pid)
        return pids

    def _stop_agent(self, log: Log) -> None:
        pid = self.agent_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            try:
                wait_for(lambda: not pid_alive(pid), timeout=45, interval=0.2, what="agent exit")
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
            log(f"stopped the node agent (pid {pid})")
        leftovers = ProcessRegistry(self.layout.agent_dir / "processes.json").kill_all()
        if leftovers:
            log(f"stopped {len(leftovers)} pod processes left behind: {leftovers}")
        self.layout.agent_pid.unlink(missing_ok=True)

    # -- node agent ----------------------------------------------------------------------

    def map_image(self, pattern: str, command: Sequence[str] | None) -> None:
        """Teach the node agent to run images matching `pattern` as `command` (None: forget
        the rule). The agent rereads its image map when the file changes."""
        path = self.layout.image_map
        with self.locked():
            document = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
            rules = [r for r in document.get("images", []) if r.get("pattern") != pattern]
            if command is not None:
                rules.insert(0, {"pattern": pattern, "command": list(command)})
            path.parent.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump({"images": rules}, sort_keys=False)
            write_file_atomic(path, text, mode=0o644)

    # -- status --------------------------------------------------------------------------

    def status(self) -> JSON:
        healthy = self.api_healthy()
        info: JSON = {
            "kubeconfig": str(self.kubeconfig),
            "bin": str(self.bin),
            "apiServer": self.api.server if healthy else None,
            "apiHealthy": healthy,
            "agentPid": self.agent_pid(),
            "agentLog": str(self.layout.agent_log),
            "podLogs": str(self.layout.agent_dir / "logs"),
            "missingBinaries": self.layout.missing_binaries(),
        }
        if healthy:
            nodes = self.api.get("/api/v1/nodes").get("items", [])
            info["nodes"] = {
                n["metadata"]["name"]: next(
                    (
                        c["status"]
                        for c in n["status"].get("conditions", [])
                        if c["type"] == "Ready"
                    ),
                    "Unknown",
                )
                for n in nodes
            }
        return info
