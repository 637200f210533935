"""batchpilot-node-agent: a kubelet stand-in that runs batchpilot's images as local processes.

It registers a Node, renews its Lease, watches the pods bound to it and gives each a PodWorker
(podworker.py). See cluster/README.md for what it supports and how images map to commands.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from batchpilot_localcluster.containers import Backoff
from batchpilot_localcluster.images import ImageMap
from batchpilot_localcluster.ipam import IPAllocator
from batchpilot_localcluster.kubeapi import JSON, UNREACHABLE, ApiError, KubeAPI
from batchpilot_localcluster.logserver import LogServer
from batchpilot_localcluster.node import NodeResources, lease_manifest, node_manifest, node_status
from batchpilot_localcluster.paths import Layout
from batchpilot_localcluster.podworker import AgentContext, PodWorker, base_environment
from batchpilot_localcluster.processes import ProcessRegistry
from batchpilot_localcluster.tokens import TokenCache

log = logging.getLogger("batchpilot.nodeagent")

DEFAULT_NODE_NAME = "batchpilot-local"
HOST_IP = "127.0.0.1"


class NodeAgent:
    def __init__(
        self,
        ctx: AgentContext,
        resources: NodeResources,
        *,
        lease_seconds: int = 40,
        status_period: float = 30.0,
        log_server: LogServer | None = None,
    ) -> None:
        self.ctx = ctx
        self.api = ctx.api
        self.name = ctx.node_name
        self.resources = resources
        self.lease_seconds = lease_seconds
        self.status_period = status_period
        self.workers: dict[str, PodWorker] = {}
        self.workers_lock = threading.Lock()
        self.stop = threading.Event()
        self.kube_version = "v0.0.0"
        self.ready_since = time.time()
        self.log_server = log_server
        self.kubelet_port = log_server.port if log_server is not None else 0

    # -- the node ------------------------------------------------------------------------

    def register(self) -> None:
        self.kube_version = str(self.api.get("/version").get("gitVersion", "v0.0.0"))
        now = time.time()
        manifest = node_manifest(
            self.name, self.resources, HOST_IP, self.kube_version, now, self.kubelet_port
        )
        try:
            self.api.create("/api/v1/nodes", manifest)
            log.info("registered node %s", self.name)
        except ApiError as error:
            if error.status != 409:
                raise
            self.api.patch(
                f"/api/v1/nodes/{self.name}",
                {"metadata": {"labels": manifest["metadata"]["labels"]}},
            )
            self.post_status(now)
            log.info("node %s already registered; status refreshed", self.name)

    def post_status(self, now: float) -> None:
        status = node_status(
            self.resources, HOST_IP, self.kube_version, now, self.ready_since, self.kubelet_port
        )
        # A merge patch replaces the lists (addresses, conditions) as a whole.
        self.api.patch(f"/api/v1/nodes/{self.name}/status", {"status": status}, patch_type="merge")

    def renew_lease(self, now: float) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        current = self.api.get_or_none(path)
        if current is None:
            node = self.api.get(f"/api/v1/nodes/{self.name}")
            lease = lease_manifest(self.name, node["metadata"]["uid"], self.lease_seconds, now)
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)
            return
        spec = lease_manifest(self.name, "", self.lease_seconds, now)["spec"]
        self.api.patch(path, {"spec": spec}, patch_type="merge")

    def heartbeat(self) -> None:
        """Renew the lease every quarter of its duration; post node status every status period."""
        next_status = time.time() + self.status_period
        while not self.stop.is_set():
            now = time.time()
            try:
                self.renew_lease(now)
                if now >= next_status:
                    self.post_status(now)
                    next_status = now + self.status_period
            except (ApiError, *UNREACHABLE) as error:  # the thread must outlive an outage
                log.warning("heartbeat failed: %s", error)
            self.stop.wait(self.lease_seconds / 4)

    # -- pods ----------------------------------------------------------------------------

    def dispatch(self, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        with self.workers_lock:
            worker = self.workers.get(uid)
            if worker is None or worker.finished.is_set():
                worker = PodWorker(self.ctx, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.update(pod)

    def forget(self, uid: str) -> None:
        with self.workers_lock:
            worker = self.workers.get(uid)
        if worker is not None:
            worker.update(None)

    def reap(self) -> None:
        with self.workers_lock:
            for uid in [u for u, w in self.workers.items() if w.finished.is_set()]:
                del self.workers[uid]

    def watch_pods(self) -> None:
        """List then watch the pods bound to this node; relist when the watch breaks."""
        selector = {"fieldSelector": f"spec.nodeName={self.name}"}
        while not self.stop.is_set():
            try:
                listing = self.api.get("/api/v1/pods", selector)
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.dispatch(pod)
                with self.workers_lock:
                    gone = [uid for uid in self.workers if uid not in seen]
                for uid in gone:
                    self.forget(uid)
                version = listing["metadata"]["resourceVersion"]
                while not self.stop.is_set():
                    for kind, pod in self.api.watch(
                        "/api/v1/pods", {**selector, "resourceVersion": version}
                    ):
                        version = pod.get("metadata", {}).get("resourceVersion", version)
                        if kind in ("ADDED", "MODIFIED"):
                            self.dispatch(pod)
                        elif kind == "DELETED":
                            self.forget(pod["metadata"]["uid"])
                        self.reap()
            except ApiError as error:
                if error.status != 410:
                    log.warning("pod watch: %s", error)
                    self.stop.wait(1.0)
            except Exception as error:
                log.warning("pod watch: %s: %s", type(error).__name__, error)
                self.stop.wait(1.0)

    # -- run -----------------------------------------------------------------------------

    def run(self) -> None:
        leftovers = self.ctx.registry.kill_all()
        if leftovers:
            log.info("stopped %d processes left by a previous agent: %s", len(leftovers), leftovers)
        if self.log_server is not None:
            self.log_server.start()
        self.register()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        log.info("node agent %s ready", self.name)
        self.stop.wait()
        self.shutdown()

    def shutdown(self) -> None:
        log.info("stopping: terminating local pods")
        with self.workers_lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(timeout=15)
        self.ctx.registry.kill_all(grace=1.0)
        if self.log_server is not None:
            self.log_server.stop()
        log.info("stopped")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    layout = Layout.default()
    parser = argparse.ArgumentParser(prog="batchpilot-node-agent", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, default=layout.kubeconfig)
    parser.add_argument("--node-name", default=DEFAULT_NODE_NAME)
    parser.add_argument("--state-dir", type=Path, default=layout.agent_dir, help="pods, logs, PIDs")
    parser.add_argument(
        "--image-map", type=Path, default=layout.image_map, help="extra image rules (YAML)"
    )
    parser.add_argument("--pod-cidr", default="127.0.0.0/24", help="loopback range for pod IPs")
    parser.add_argument("--sync-period", type=float, default=30.0, help="volume refresh period (s)")
    parser.add_argument("--cpu", default="32")
    parser.add_argument("--memory", default="128Gi")
    parser.add_argument("--gpus", type=int, default=8, help="simulated nvidia.com/gpu capacity")
    parser.add_argument("--backoff-base", type=float, default=2.0, help="first restart delay (s)")
    parser.add_argument("--backoff-max", type=float, default=60.0, help="longest restart delay (s)")
    parser.add_argument("--tls-cert-file", type=Path, help="serve container logs with this cert")
    parser.add_argument("--tls-private-key-file", type=Path, help="... and this key")
    parser.add_argument("--kubelet-port", type=int, default=0, help="log server port (0: any)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> NodeAgent:
    api = KubeAPI.from_kubeconfig(args.kubeconfig)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    ctx = AgentContext(
        api=api,
        node_name=args.node_name,
        host_ip=HOST_IP,
        ipam=IPAllocator(args.pod_cidr),
        images=ImageMap(args.image_map),
        tokens=TokenCache(api),
        registry=ProcessRegistry(args.state_dir / "processes.json"),
        state_dir=args.state_dir,
        sync_period=args.sync_period,
        backoff=Backoff(args.backoff_base, args.backoff_max),
        base_env=base_environment(),
    )
    resources = NodeResources(cpu=args.cpu, memory=args.memory, gpus=args.gpus)
    log_server = None
    if args.tls_cert_file and args.tls_private_key_file:
        logs_dir = ctx.logs_dir

        def locate(namespace: str, pod: str, container: str) -> Path | None:
            found = list(logs_dir.glob(f"{namespace}_{pod}_*/{container}.log"))
            return max(found, key=lambda p: p.stat().st_mtime) if found else None

        log_server = LogServer(
            locate, args.tls_cert_file, args.tls_private_key_file, args.kubelet_port
        )
    return NodeAgent(ctx, resources, log_server=log_server)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # One line per API request is noise; the agent logs what it does itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = build(args)

    def stop(signum: int, frame: FrameType | None) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
