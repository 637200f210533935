"""The local node's API objects: its Node (labels, capacity, conditions) and its Lease. Pure.

The node advertises simulated `nvidia.com/gpu` capacity so that pods asking for GPUs (as every
BatchedModel replica does) can be placed on it; their processes run on the CPU.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]

LOCAL_NODE_LABEL = "batchpilot.dev/local-node"
AGENT_VERSION = "batchpilot-node-agent://0.1.0"


@dataclass(frozen=True)
class NodeResources:
    cpu: str = "32"
    memory: str = "128Gi"
    pods: str = "250"
    gpus: int = 8
    gpu_resource: str = "nvidia.com/gpu"
    ephemeral_storage: str = "500Gi"

    def as_quantities(self) -> dict[str, str]:
        quantities = {
            "cpu": self.cpu,
            "memory": self.memory,
            "pods": self.pods,
            "ephemeral-storage": self.ephemeral_storage,
        }
        if self.gpus:
            quantities[self.gpu_resource] = str(self.gpus)
        return quantities


def micro_time(at: float) -> str:
    """A MicroTime (what Lease.renewTime wants)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1e6):06d}Z"


def rfc3339(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def node_conditions(now: float, since: float) -> list[JSON]:
    def condition(kind: str, status: str, reason: str, message: str) -> JSON:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": rfc3339(now),
            "lastTransitionTime": rfc3339(since),
        }

    return [
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "node agent has sufficient memory",
        ),
        condition(
            "DiskPressure", "False", "KubeletHasNoDiskPressure", "node agent has no disk pressure"
        ),
        condition(
            "PIDPressure", "False", "KubeletHasSufficientPID", "node agent has sufficient PID"
        ),
        condition("Ready", "True", "KubeletReady", "batchpilot node agent is posting ready status"),
    ]


def node_status(
    resources: NodeResources,
    host_ip: str,
    kube_version: str,
    now: float,
    since: float,
    kubelet_port: int = 0,
) -> JSON:
    quantities = resources.as_quantities()
    uname = platform.uname()
    return {
        "capacity": quantities,
        "allocatable": quantities,
        "conditions": node_conditions(now, since),
        # No Hostname address: the API server would try to resolve it to reach the log server.
        "addresses": [{"type": "InternalIP", "address": host_ip}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": _machine_id(),
            "systemUUID": _machine_id(),
            "bootID": "",
            "kernelVersion": uname.release,
            "osImage": f"{uname.system} (processes, no containers)",
            "containerRuntimeVersion": AGENT_VERSION,
            "kubeletVersion": kube_version,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(
                uname.machine, uname.machine
            ),
        },
    }


def _machine_id() -> str:
    try:
        with open("/etc/machine-id") as handle:
            return handle.read().strip()
    except OSError:
        return f"local-{os.getuid()}"


def node_manifest(
    name: str,
    resources: NodeResources,
    host_ip: str,
    kube_version: str,
    now: float,
    kubelet_port: int = 0,
) -> JSON:
    """The Node the agent registers. No kwok annotation: kwok must leave it alone."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                LOCAL_NODE_LABEL: "true",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": arch,
                "type": "local",
            },
        },
        "spec": {},
        "status": node_status(resources, host_ip, kube_version, now, now, kubelet_port),
    }


def lease_manifest(node_name: str, node_uid: str, duration: int, now: float) -> JSON:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node_name,
            "namespace": "kube-node-lease",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid}
            ],
        },
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": duration,
            "renewTime": micro_time(now),
        },
    }
