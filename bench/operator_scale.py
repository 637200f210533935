"""The operator at scale: many BatchedModels on kwok nodes, on the real control plane.

Adds kwok nodes for the pods (kwok fakes their status: nothing runs), starts the operator as
a local process watching one namespace (the admin kubeconfig; CPU and memory read from
``/proc``), and creates BatchedModels in steps (``--sizes``, default 100 then 1,000 in all)
whose pods tolerate kwok's taint. It measures, per step:

- apply to Deployment: from each create call's return to the Deployment's ADDED event on a
  watch (p50, p99);
- the time until every BatchedModel reports ``1/1`` ready;
- at rest, with autoscaling off and then on (the pods' metrics missing: nothing listens on a
  kwok pod's address), over ``--rest`` seconds: the operator's CPU share and memory, and the
  API requests per second (the API server's ``apiserver_request_total``, less the rate
  measured before the operator started: taken before the pods existed, so it also counts the
  control plane's own work for them, an upper bound on the operator's).

    python -m bench.operator_scale   # about 15 minutes

Writes ``bench/results/operator-scale.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from batchpilot_localcluster import kwokconfig
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.images import scripts_dir
from batchpilot_localcluster.waits import wait_for

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
NAMESPACE = "batchpilot-scale"
PODS_PER_NODE = 100
GROUP = "/apis/batchpilot.dev/v1alpha1"


def model(name: str, *, autoscaling: bool = False) -> dict[str, Any]:
    """A BatchedModel whose one pod lands on a kwok node."""
    return {
        "apiVersion": "batchpilot.dev/v1alpha1",
        "kind": "BatchedModel",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "emulated://minilm-l6-datacenter-gpu", "task": "embedding"},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "nodeSelector": {"type": "kwok"},
            "tolerations": [kwokconfig.gpu_toleration()],
            "replicas": 1,
            "autoscaling": {"enabled": autoscaling, "intervalSeconds": 15},
        },
    }


def request_total(cluster: LocalCluster) -> float:
    """Every request the API server has served since it started (all clients)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
    )


def request_rate(cluster: LocalCluster, seconds: float) -> float:
    before = request_total(cluster)
    time.sleep(seconds)
    return (request_total(cluster) - before) / seconds


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class DeploymentWatch:
    """The time each Deployment of the namespace was first seen, from a watch."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.added: dict[str, float] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
        while not self._stop:
            for kind, obj in self.cluster.api.watch(path, timeout_seconds=30):
                if kind == "ADDED":
                    self.added.setdefault(obj["metadata"]["name"], time.monotonic())
                if self._stop:
                    return

    def stop(self) -> None:
        self._stop = True

    def saw_all(self, names: list[str]) -> bool:
        return all(name in self.added for name in names)


def rest(cluster: LocalCluster, pid: int, seconds: float, baseline: float) -> dict[str, float]:
    """The operator's footprint over ``seconds`` of rest."""
    cpu = cpu_seconds(pid)
    rate = request_rate(cluster, seconds)
    return {
        "operator_cpu_share": (cpu_seconds(pid) - cpu) / seconds,
        "operator_rss_mib": rss_mib(pid),
        "operator_requests_per_s": max(0.0, rate - baseline),
    }


def ready_count(cluster: LocalCluster) -> int:
    """BatchedModels that report their one replica ready."""
    items = cluster.api.get(f"{GROUP}/namespaces/{NAMESPACE}/batchedmodels")["items"]
    return sum(1 for bm in items if (bm.get("status") or {}).get("ready") == "1/1")


def wait_ready(
    cluster: LocalCluster, count: int, began: float, bound_s: float
) -> tuple[int, float | None]:
    """Wait until ``count`` models are ready, at most ``bound_s`` after ``began``: how many
    were, and the seconds it took (None when the bound came first)."""
    while True:
        ready = ready_count(cluster)
        elapsed = time.monotonic() - began
        if ready >= count:
            return ready, elapsed
        if elapsed > bound_s:
            return ready, None
        time.sleep(2.0)


def create_models(cluster: LocalCluster, names: list[str]) -> dict[str, float]:
    """Create the models eight at a time; when each create call returned."""
    created: dict[str, float] = {}
    path = f"{GROUP}/namespaces/{NAMESPACE}/batchedmodels"

    def one(name: str) -> None:
        cluster.api.create(path, model(name))
        created[name] = time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))
    return created


def set_autoscaling(cluster: LocalCluster, names: list[str], enabled: bool) -> None:
    path = f"{GROUP}/namespaces/{NAMESPACE}/batchedmodels"
    body = {"spec": {"autoscaling": {"enabled": enabled}}}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: cluster.api.patch(f"{path}/{n}", body, patch_type="merge"), names))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cluster = LocalCluster()
    cluster.check_binaries()
    cluster.up(print)
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "batchedmodels.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/batchedmodels.batchpilot.dev")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    for i in range(math.ceil(max(args.sizes) / PODS_PER_NODE)):
        name = f"kwok-scale-{i}"
        if cluster.api.get_or_none(f"/api/v1/nodes/{name}") is None:
            cluster.api.create("/api/v1/nodes", kwokconfig.gpu_node(name, gpus=0))
    print(f"baseline API request rate over {args.rest:g} s, no operator ...", flush=True)
    baseline = request_rate(cluster, args.rest)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    log_path = Path(tempfile.gettempdir()) / "batchpilot-operator-scale.log"
    print(f"operator log: {log_path}", flush=True)
    operator = subprocess.Popen(
        [str(scripts_dir() / "batchpilot-operator"), "-n", NAMESPACE, "--liveness", "", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "w"),  # noqa: SIM115 (the process owns it)
    )
    steps: list[dict[str, Any]] = []
    watch = DeploymentWatch(cluster)
    try:
        time.sleep(5)
        names: list[str] = []
        for size in args.sizes:
            new = [f"m{i:04d}" for i in range(len(names), size)]
            print(f"creating {len(new)} BatchedModels ({size} in all) ...", flush=True)
            cpu0, began = cpu_seconds(operator.pid), time.monotonic()
            created = create_models(cluster, new)
            wait_for(partial(watch.saw_all, new), timeout=600, interval=1, what="Deployments")
            ready, all_ready_s = wait_ready(cluster, size, began, args.ready_timeout)
            names += new
            latencies = [watch.added[n] - created[n] for n in new]
            step: dict[str, Any] = {
                "models": size,
                "created": len(new),
                "ready_at_bound": ready,
                "apply_to_deployment_p50_s": statistics.median(latencies),
                "apply_to_deployment_p99_s": quantile(latencies, 0.99),
                "apply_to_deployment_max_s": max(latencies),
                "all_ready_s": all_ready_s,
                "operator_cpu_s_while_creating": cpu_seconds(operator.pid) - cpu0,
            }
            print(f"at rest, autoscaling off, {size} models ...", flush=True)
            step["rest_autoscaling_off"] = rest(cluster, operator.pid, args.rest, baseline)
            set_autoscaling(cluster, names, True)
            time.sleep(30)  # the daemons start and take their first scrape
            print(f"at rest, autoscaling on (metrics missing), {size} models ...", flush=True)
            step["rest_autoscaling_on"] = rest(cluster, operator.pid, args.rest, baseline)
            set_autoscaling(cluster, names, False)
            steps.append(step)
            print(json.dumps(step, indent=1), flush=True)
    finally:
        watch.stop()
        operator.terminate()
        operator.wait(timeout=60)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)
    return {"baseline_requests_per_s": baseline, "rest_s": args.rest, "steps": steps}


def _ready(step: dict[str, Any]) -> str:
    if step["all_ready_s"] is not None:
        return f"{step['all_ready_s']:.0f}"
    return f"not all: {step['ready_at_bound']} of {step['models']} at the bound"


def report(result: dict[str, Any], date: str) -> str:
    rows = [
        "| models | apply to Deployment p50 / p99 / max s | all ready s | at rest, autoscaling "
        "off: CPU, RSS MiB, requests/s (per model) | at rest, autoscaling on: CPU, RSS MiB, "
        "requests/s (per model) |",
        "|---|---|---|---|---|",
    ]
    for step in result["steps"]:
        cells = []
        for key in ("rest_autoscaling_off", "rest_autoscaling_on"):
            r = step[key]
            per_model = r["operator_requests_per_s"] / step["models"]
            cells.append(
                f"{r['operator_cpu_share']:.0%}, {r['operator_rss_mib']:.0f}, "
                f"{r['operator_requests_per_s']:.1f} ({per_model:.3f})"
            )
        rows.append(
            f"| {step['models']} | {step['apply_to_deployment_p50_s']:.2f} / "
            f"{step['apply_to_deployment_p99_s']:.2f} / {step['apply_to_deployment_max_s']:.2f} | "
            f"{_ready(step)} | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(
        [
            "# The operator at scale",
            "",
            f"{date}; `python -m bench.operator_scale`; 2 cores, 24 GiB. BatchedModels with one "
            "pod each on kwok nodes (kwok fakes the pods: nothing runs), the operator as one "
            "local process watching their namespace. Requests per second are the API "
            "server's `apiserver_request_total` over the rest, less the "
            f"{result['baseline_requests_per_s']:.1f}/s measured before the operator started (and "
            "before the pods existed: an upper bound on the operator's own). "
            f"Rest: {result['rest_s']:g} s each.",
            "",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100, 1000], help="models in all at each step")  # fmt: skip
    parser.add_argument("--rest", type=float, default=60.0, help="seconds of each rest")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds a step may take to get every model ready")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = measure(args)
    date = time.strftime("%Y-%m-%d")
    (args.out / "operator-scale.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "operator-scale.md").write_text(report(result, date))
    print(report(result, date))


if __name__ == "__main__":
    main()
