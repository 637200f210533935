"""batchpilot-cluster: `up`, `down`, `status` and `kubeconfig` for the local cluster.

batchpilot-cluster up            start (or complete) the cluster; print how to use it
batchpilot-cluster down          stop the node agent, its pods and the control plane
batchpilot-cluster status        what runs, as JSON
batchpilot-cluster kubeconfig    print the kubeconfig path
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.clusteraccess import ClusterError
from batchpilot_localcluster.paths import Layout


def _say(message: str) -> None:
    print(f"cluster: {message}", flush=True)


def usage(cluster: LocalCluster) -> str:
    return "\n".join(
        [
            f"kubeconfig: {cluster.kubeconfig}",
            "use it with:",
            f"  export KUBECONFIG={cluster.kubeconfig}",
            f'  export PATH="{cluster.bin}:$PATH"   # kubectl, helm, kwokctl',
            "  kubectl get nodes",
            f"node agent log: {cluster.layout.agent_log}",
            f"local pod logs: {cluster.layout.agent_dir / 'logs'}/<namespace>_<pod>_<uid>/",
            "stop it with: make cluster-down",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="batchpilot-cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local cluster (reuses a running one)")
    up.add_argument(
        "--gpu-nodes",
        type=int,
        default=int(os.environ.get("BATCHPILOT_GPU_NODES", "2")),
        help="kwok nodes with GPUs (default: $BATCHPILOT_GPU_NODES or 2)",
    )
    up.add_argument(
        "--gpus-per-node",
        type=int,
        default=int(os.environ.get("BATCHPILOT_GPUS_PER_NODE", "4")),
        help="nvidia.com/gpu per kwok node (default: $BATCHPILOT_GPUS_PER_NODE or 4)",
    )
    up.add_argument("--agent-arg", action="append", default=[], help="extra node agent flag")
    sub.add_parser("down", help="stop everything `up` started")
    sub.add_parser("status", help="print the cluster's state as JSON")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    args = parser.parse_args(argv)

    layout = Layout.default()
    try:
        if args.command == "up":
            cluster = LocalCluster(
                layout,
                gpu_nodes=args.gpu_nodes,
                gpus_per_node=args.gpus_per_node,
                agent_args=args.agent_arg,
            )
            start = time.monotonic()
            started = cluster.up(_say)
            verb = "started" if started else "already running; completed"
            _say(f"{verb} in {time.monotonic() - start:.1f}s")
            print(usage(cluster))
        elif args.command == "down":
            LocalCluster(layout).down(_say)
        elif args.command == "status":
            print(json.dumps(LocalCluster(layout).status(), indent=2))
        else:
            print(layout.kubeconfig)
    except ClusterError as error:
        print(f"cluster: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
