"""The kwokctl configuration of the local cluster, and the kwok GPU nodes. Pure.

kwokctl runs the control plane as local processes (`--runtime binary`) from the binaries that
cluster/build-binaries.sh built: no download, every component on 127.0.0.1. The kwok
controller manages only nodes annotated `kwok.x-k8s.io/node: fake`, so the node agent's Node
is left to the agent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

JSON = dict[str, Any]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_POD_CIDR = "127.1.0.1/16"
"""Pod IPs of kwok nodes: loopback, apart from the local node's 127.0.0.0/24."""
KWOK_TAINT = {"key": KWOK_ANNOTATION, "value": "fake", "effect": "NoSchedule"}
GPU_RESOURCE = "nvidia.com/gpu"


def kwokctl_configuration(
    bin_dir: Path,
    *,
    kube_version: str,
    etcd_version: str,
    cache_dir: Path,
) -> list[JSON]:
    """The documents of kwokctl's --config file."""
    options: JSON = {
        "runtime": "binary",
        "bindAddress": "127.0.0.1",
        "kubeApiserverCertSANs": ["127.0.0.1", "localhost"],
        "kubeVersion": kube_version,
        "etcdVersion": etcd_version.removeprefix("v"),
        "securePort": True,
        "kubeAuthorization": True,
        "kubeAdmission": True,
        "quietPull": True,
        "cacheDir": str(cache_dir),
        "kubeApiserverBinary": str(bin_dir / "kube-apiserver"),
        "kubeControllerManagerBinary": str(bin_dir / "kube-controller-manager"),
        "kubeSchedulerBinary": str(bin_dir / "kube-scheduler"),
        "kubectlBinary": str(bin_dir / "kubectl"),
        "etcdBinary": str(bin_dir / "etcd"),
        "kwokControllerBinary": str(bin_dir / "kwok"),
    }
    patches = [
        {
            "name": "kwok-controller",
            "extraArgs": [
                {"key": "manage-all-nodes", "value": "false", "override": True},
                {
                    "key": "manage-nodes-with-annotation-selector",
                    "value": f"{KWOK_ANNOTATION}=fake",
                },
                # Fake pods get loopback addresses too (kwok's default is 10.0.0.1/24): a
                # client that calls a pod IP (the operator scraping metrics) stays on 127/8.
                {"key": "cidr", "value": KWOK_POD_CIDR},
            ],
        }
    ]
    return [
        {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
            "kind": "KwokctlConfiguration",
            "options": options,
            "componentsPatches": patches,
        }
    ]


def render(documents: list[JSON]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def gpu_node(
    name: str,
    *,
    gpus: int = 4,
    labels: dict[str, str] | None = None,
    taints: list[JSON] | None = None,
    cpu: str = "32",
    memory: str = "256Gi",
) -> JSON:
    """A kwok-managed node with `gpus` nvidia.com/gpu.

    It carries the `kwok.x-k8s.io/node=fake:NoSchedule` taint by default, so only pods that
    tolerate it land there (nothing runs on a kwok node; kwok only fakes pod status).
    """
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/agent": "",
                "batchpilot.dev/gpu-node": "true",
                **(labels or {}),
            },
        },
        "spec": {"taints": [KWOK_TAINT] if taints is None else taints},
        "status": {"allocatable": capacity, "capacity": capacity},
    }


def gpu_toleration() -> JSON:
    """What a pod needs to be placed on a kwok GPU node."""
    return {"key": KWOK_ANNOTATION, "operator": "Exists", "effect": "NoSchedule"}
