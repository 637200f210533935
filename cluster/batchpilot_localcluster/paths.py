"""Where the local cluster keeps binaries and state: $BATCHPILOT_HOME (~/.cache/batchpilot)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Every binary `cluster/build-binaries.sh` builds; the cluster needs all of them.
BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
    "helm",
)

#: The command that builds missing binaries, named in every error about them.
BUILD_COMMAND = "make binaries"

#: kwokctl's name for the cluster (its workdir is <state>/kwok/clusters/<name>).
CLUSTER_NAME = "batchpilot"


def default_home() -> Path:
    """$BATCHPILOT_HOME, or ~/.cache/batchpilot."""
    env = os.environ.get("BATCHPILOT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "batchpilot"


@dataclass(frozen=True)
class Layout:
    """The files of one local cluster, all under `home`."""

    home: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(default_home())

    @property
    def bin(self) -> Path:
        return self.home / "bin"

    @property
    def state(self) -> Path:
        return self.home / "cluster"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def kwok_workdir(self) -> Path:
        """KWOK_WORKDIR for kwokctl: its clusters, cache and default config live here."""
        return self.state / "kwok"

    @property
    def kwok_cluster_dir(self) -> Path:
        return self.kwok_workdir / "clusters" / CLUSTER_NAME

    @property
    def kwokctl_config(self) -> Path:
        return self.state / "kwokctl.yaml"

    @property
    def agent_dir(self) -> Path:
        return self.state / "agent"

    @property
    def agent_pid(self) -> Path:
        return self.agent_dir / "agent.pid"

    @property
    def agent_log(self) -> Path:
        return self.agent_dir / "agent.log"

    @property
    def image_map(self) -> Path:
        """Extra image -> command rules the node agent reads (and rereads when it changes)."""
        return self.agent_dir / "images.yaml"

    @property
    def model_cache(self) -> Path:
        """The local node's Hugging Face cache (HF_HUB_CACHE of its pods): where hf:// model
        URIs resolve, as on a GPU node with a pre-filled model cache."""
        return self.home / "models"

    @property
    def lock(self) -> Path:
        return self.state / ".lock"

    @property
    def sessions(self) -> Path:
        """One file per test session using the cluster (see tests/cluster/conftest.py)."""
        return self.state / "sessions"

    def binary(self, name: str) -> Path:
        return self.bin / name

    def missing_binaries(self) -> list[str]:
        return [name for name in BINARIES if not os.access(self.binary(name), os.X_OK)]
