"""The local cluster is a real control plane, and its node agent runs pods as local processes."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.kwokconfig import gpu_node, gpu_toleration
from batchpilot_localcluster.processes import pid_alive
from batchpilot_localcluster.waits import wait_for

JSON = dict[str, Any]
APP = Path(__file__).with_name("appserver.py")
LOCAL = {"batchpilot.dev/local-node": "true"}


# Straight to the pod: never through a proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(ip: str, path: str, port: int = 8080) -> tuple[int, str]:
    """(status, body) of GET http://ip:port/path; (0, reason) when nothing answers."""
    assert ip.startswith("127."), f"pod IP {ip} is not a loopback address"
    try:
        with OPENER.open(f"http://{ip}:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, OSError) as error:
        return 0, str(error)


def app_deployment(
    name: str,
    *,
    replicas: int = 1,
    configmap: str | None = None,
    service_account: str | None = None,
    ready_after: float = 1.0,
) -> JSON:
    """A Deployment of the test app (image batchpilot/python) on the local node."""
    container: JSON = {
        "name": "app",
        "image": "batchpilot/python:test",
        "args": [
            str(APP),
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--ready-after",
            str(ready_after),
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "CONFIG_FILE", "value": "/etc/app/config.json"},
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
    }
    spec: JSON = {
        "nodeSelector": LOCAL,
        "containers": [container],
        "terminationGracePeriodSeconds": 5,
    }
    if configmap:
        container["volumeMounts"] = [{"name": "config", "mountPath": "/etc/app"}]
        spec["volumes"] = [{"name": "config", "configMap": {"name": configmap}}]
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def container_pid(pod: JSON) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("process://"), container_id
    return int(container_id.removeprefix("process://"))


def test_server_is_kubernetes_1_36(cluster: LocalCluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"].startswith("v1.36.")
    assert versions["clientVersion"]["gitVersion"].startswith("v1.36.")


def listening_addresses(pids: list[int]) -> set[str]:
    """Local addresses of the TCP sockets these processes listen on (from /proc)."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else []:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address = local.split(":")[0]
                if len(address) == 8:
                    address = str(ipaddress.IPv4Address(int(address, 16).to_bytes(4, "little")))
                addresses.add(address)
    return addresses


def test_components_listen_on_loopback_only(cluster: LocalCluster) -> None:
    assert cluster.api.server.startswith("https://127.0.0.1:"), cluster.api.server
    workdir = str(cluster.layout.kwok_workdir).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if workdir in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    assert len(pids) >= 5, "etcd, kube-apiserver, controller-manager, scheduler, kwok"
    addresses = listening_addresses(pids)
    assert addresses, "the control plane listens somewhere"
    assert addresses == {"127.0.0.1"}, addresses


def widget_crd(group: str) -> JSON:
    """A small namespaced CRD, Widget, with a validated spec.size."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }


def test_crd_serves_custom_objects(cluster: LocalCluster, namespace: str) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.batchpilot.dev"
    crd = widget_crd(group)
    cluster.apply(crd)
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s"
        )
        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w1", "namespace": namespace},
            "spec": {"size": 3},
        }
        cluster.apply(widget)
        got = cluster.get_json(f"widgets.{group}", "w1", "-n", namespace)
        assert got["spec"] == {"size": 3}
        refused = cluster.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({**widget, "spec": {"size": 0}}),
            check=False,
        )
        assert refused.returncode != 0
        assert "spec.size" in refused.stderr
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


def test_deployment_runs_a_process_that_serves_on_its_pod_ip(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.apply(app_deployment("web", replicas=2), "-n", namespace)
    pods = cluster.wait_pods(namespace, "app=web", count=2)

    ips = {pod["status"]["podIP"] for pod in pods}
    assert len(ips) == 2, "each pod has its own address"
    for pod in pods:
        ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
        assert ip.startswith("127.0.0.")
        assert pod["spec"]["nodeName"] == "batchpilot-local"
        assert http_get(ip, "/pid") == (200, str(container_pid(pod)))
        assert http_get(ip, "/env?name=POD_NAME") == (200, json.dumps(name))
        assert http_get(ip, "/env?name=POD_IP") == (200, json.dumps(ip))
        assert http_get(ip, "/env?name=BATCHPILOT_HOST") == (200, json.dumps(ip))
        assert http_get(ip, "/env?name=KUBERNETES_SERVICE_HOST") == (200, "null")
        status = pod["status"]
        assert status["phase"] == "Running"
        kinds = {c["type"]: c["status"] for c in status["conditions"]}
        for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            assert kinds[kind] == "True", kind
        container = status["containerStatuses"][0]
        assert container["ready"] is True
        assert container["restartCount"] == 0
        assert "running" in container["state"]


def test_service_endpoints_resolve_to_the_ready_pods(cluster: LocalCluster, namespace: str) -> None:
    cluster.apply(app_deployment("svc", replicas=2), "-n", namespace)
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "svc"},
        "spec": {
            "selector": {"app": "svc"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    cluster.apply(service, "-n", namespace)
    pods = cluster.wait_pods(namespace, "app=svc", count=2)
    expected = sorted(f"{p['status']['podIP']}:8080" for p in pods)
    endpoints = wait_for(
        lambda: (
            (found := cluster.service_endpoints(namespace, "svc", "http")) == expected and found
        ),
        timeout=60,
        what="the Service's endpoints",
    )
    for endpoint in endpoints:
        ip, port = endpoint.split(":")
        assert http_get(ip, "/ready", int(port)) == (200, "ok")


def test_readiness_probe_gates_ready(cluster: LocalCluster, namespace: str) -> None:
    cluster.apply(app_deployment("slow", ready_after=4.0), "-n", namespace)
    (pod,) = cluster.wait_pods(namespace, "app=slow", ready=False)
    running = wait_for(
        lambda: next(
            (
                p
                for p in cluster.pods(namespace, "app=slow")
                if p.get("status", {}).get("podIP")
                and http_get(p["status"]["podIP"], "/ready")[0] == 503
            ),
            None,
        ),
        timeout=60,
        what="the app answering 503 on /ready",
    )
    ready = {c["type"]: c["status"] for c in running["status"]["conditions"]}["Ready"]
    assert ready == "False", "not Ready while the readiness probe fails"
    (pod,) = cluster.wait_pods(namespace, "app=slow")
    assert http_get(pod["status"]["podIP"], "/ready") == (200, "ok")


def _projected(cluster: LocalCluster, namespace: str, name: str) -> tuple[JSON, str]:
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config"},
            "data": {"config.json": '{"maxBatchSize": 8}'},
        },
        "-n",
        namespace,
    )
    cluster.apply(app_deployment(name, configmap=f"{name}-config"), "-n", namespace)
    (pod,) = cluster.wait_pods(namespace, f"app={name}")
    ip = pod["status"]["podIP"]
    status, path = http_get(ip, "/env?name=CONFIG_FILE")
    path = json.loads(path)
    assert status == 200
    assert path != "/etc/app/config.json", "the mount path is rewritten to a local directory"
    assert path.endswith("/config.json")
    assert http_get(ip, f"/file?path={path}") == (200, '{"maxBatchSize": 8}')
    return pod, path


def test_configmap_change_reaches_the_file_when_the_pod_is_annotated(
    cluster: LocalCluster, namespace: str
) -> None:
    pod, path = _projected(cluster, namespace, "hot")
    new = '{"maxBatchSize": 32}'
    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "configmap",
        "hot-config",
        "--type=merge",
        "-p",
        json.dumps({"data": {"config.json": new}}),
    )
    cluster.kubectl(
        "-n", namespace, "annotate", "pod", pod["metadata"]["name"], "batchpilot.dev/config=2"
    )
    ip = pod["status"]["podIP"]
    wait_for(
        lambda: http_get(ip, f"/file?path={path}") == (200, new),
        timeout=30,
        interval=0.1,
        what="the new ConfigMap content in the projected file",
    )


def test_configmap_change_reaches_the_file_on_the_periodic_sync(
    cluster: LocalCluster, namespace: str
) -> None:
    _, path = _projected(cluster, namespace, "sync")
    new = '{"maxBatchSize": 4}'
    cluster.kubectl(
        "-n",
        namespace,
        "patch",
        "configmap",
        "sync-config",
        "--type=merge",
        "-p",
        json.dumps({"data": {"config.json": new}}),
    )
    # kubelet refreshes on its next sync, up to about a minute later; so does the agent.
    wait_for(
        lambda: Path(path).read_text() == new,
        timeout=120,
        interval=0.5,
        what="the periodic sync to refresh the projected file",
    )


def test_deleting_the_deployment_stops_the_processes(cluster: LocalCluster, namespace: str) -> None:
    cluster.apply(app_deployment("gone", replicas=2), "-n", namespace)
    pids = [container_pid(p) for p in cluster.wait_pods(namespace, "app=gone", count=2)]
    assert all(pid_alive(pid) for pid in pids)

    cluster.kubectl("-n", namespace, "delete", "deployment", "gone")
    wait_for(
        lambda: not cluster.pods(namespace, "app=gone"),
        timeout=60,
        what="the pods to be removed",
    )
    wait_for(
        lambda: not any(pid_alive(pid) for pid in pids),
        timeout=30,
        what=f"processes {pids} to exit",
    )


def test_unknown_image_is_reported_not_runnable(cluster: LocalCluster, namespace: str) -> None:
    image = "registry.invalid/someone/else:1.0"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "foreign"},
        "spec": {"nodeSelector": LOCAL, "containers": [{"name": "main", "image": image}]},
    }
    cluster.apply(pod, "-n", namespace)

    def waiting() -> JSON | None:
        statuses = cluster.get_json("pod", "foreign", "-n", namespace)["status"].get(
            "containerStatuses"
        )
        state = (statuses or [{}])[0].get("state", {}).get("waiting")
        return state if state and state.get("reason") == "ImageNotRunnable" else None

    state = wait_for(waiting, timeout=60, what="ImageNotRunnable")
    assert image in state["message"]
    assert cluster.get_json("pod", "foreign", "-n", namespace)["status"]["phase"] == "Pending"


def test_crashing_container_restarts_with_backoff(cluster: LocalCluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "crash"},
        "spec": {
            "nodeSelector": LOCAL,
            "containers": [
                {
                    "name": "main",
                    "image": "batchpilot/python:test",
                    "args": ["-c", "import sys; print('bye', flush=True); sys.exit(3)"],
                }
            ],
        },
    }
    cluster.apply(pod, "-n", namespace)

    def restarted_twice() -> JSON | None:
        status = cluster.get_json("pod", "crash", "-n", namespace)["status"]
        container = (status.get("containerStatuses") or [{}])[0]
        return container if container.get("restartCount", 0) >= 2 else None

    container = wait_for(restarted_twice, timeout=90, what="two restarts")
    assert container["lastState"]["terminated"]["exitCode"] == 3
    assert "bye" in cluster.pod_log(namespace, "crash")
    # kubectl logs works too: the API server asks the agent's log server.
    assert "bye" in cluster.kubectl("-n", namespace, "logs", "crash").stdout


def test_service_account_token_is_subject_to_rbac(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("-n", namespace, "create", "serviceaccount", "reader")
    cluster.apply(app_deployment("rbac", service_account="reader"), "-n", namespace)
    (pod,) = cluster.wait_pods(namespace, "app=rbac")
    ip = pod["status"]["podIP"]
    configmaps = f"/api/v1/namespaces/{namespace}/configmaps"

    assert http_get(ip, f"/kube?path={configmaps}") == (200, "403"), "no Role yet: forbidden"

    cluster.kubectl(
        "-n", namespace, "create", "role", "read-cm", "--verb=get,list", "--resource=configmaps"
    )
    cluster.kubectl(
        "-n",
        namespace,
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        f"--serviceaccount={namespace}:reader",
    )
    wait_for(
        lambda: http_get(ip, f"/kube?path={configmaps}") == (200, "200"),
        timeout=30,
        what="the Role to allow listing ConfigMaps",
    )
    assert http_get(ip, "/kube?path=/api/v1/secrets") == (200, "403"), "only what the Role grants"


def test_kwok_gpu_nodes_accept_pods_until_full(cluster: LocalCluster, namespace: str) -> None:
    gpus_per_pod = 2
    # The default kwok GPU nodes are there, Ready, with their GPUs.
    default = cluster.api.get("/api/v1/nodes", {"labelSelector": "type=kwok"})["items"]
    assert len(default) >= 2
    for node in default:
        assert int(node["status"]["allocatable"]["nvidia.com/gpu"]) > 0

    # Nodes of our own, so that other tests using the shared GPU nodes cannot interfere.
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    names = [f"{pool}-{i}" for i in range(2)]
    for name in names:
        cluster.apply(gpu_node(name, gpus=4, labels={"batchpilot.dev/pool": pool}))
    try:
        wait_for(
            lambda: all(
                any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in cluster.get_json("node", n)["status"].get("conditions", [])
                )
                for n in names
            ),
            timeout=60,
            what="kwok to make the GPU nodes Ready",
        )
        capacity = 8 // gpus_per_pod
        for index in range(capacity + 1):
            cluster.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"gpu-{index}", "labels": {"pool": pool}},
                    "spec": {
                        "nodeSelector": {"batchpilot.dev/pool": pool},
                        "tolerations": [gpu_toleration()],
                        "containers": [
                            {
                                "name": "main",
                                "image": "batchpilot/runtime:test",
                                "resources": {
                                    "limits": {"nvidia.com/gpu": str(gpus_per_pod)},
                                },
                            }
                        ],
                    },
                },
                "-n",
                namespace,
            )

        def settled() -> tuple[list[JSON], list[JSON]] | None:
            pods = cluster.pods(namespace, f"pool={pool}")
            running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
            pending = [
                p
                for p in pods
                if any(
                    c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable"
                    for c in p.get("status", {}).get("conditions") or []
                )
            ]
            return (running, pending) if len(running) == capacity and pending else None

        running, pending = wait_for(settled, timeout=90, what="GPU pods to fill the pool")
        assert {p["spec"]["nodeName"] for p in running} == set(names)
        # Fake pods have loopback addresses too: nothing that calls a pod IP leaves 127/8.
        assert all(p["status"]["podIP"].startswith("127.1.") for p in running)
        (refused,) = pending
        assert refused["status"]["phase"] == "Pending"
        message = next(
            c["message"] for c in refused["status"]["conditions"] if c["type"] == "PodScheduled"
        )
        assert "Insufficient nvidia.com/gpu" in message
    finally:
        cluster.kubectl("-n", namespace, "delete", "pods", "-l", f"pool={pool}", "--wait=false")
        for name in names:
            cluster.kubectl("delete", "node", name, "--wait=false", check=False)


def test_init_containers_secrets_and_shared_empty_dir(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl(
        "-n", namespace, "create", "secret", "generic", "creds", "--from-literal=key=s3"
    )
    write = "import os, pathlib; pathlib.Path(os.environ['OUT']).write_text('from-init')"
    deployment = app_deployment("init")
    spec = deployment["spec"]["template"]["spec"]
    spec["volumes"] = [
        {"name": "shared", "emptyDir": {}},
        {"name": "creds", "secret": {"secretName": "creds"}},
    ]
    spec["initContainers"] = [
        {
            "name": "prepare",
            "image": "batchpilot/python:test",
            "args": ["-c", write],
            "env": [{"name": "OUT", "value": "/shared/marker"}],
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }
    ]
    app = spec["containers"][0]
    app["volumeMounts"] = [
        {"name": "shared", "mountPath": "/shared"},
        {"name": "creds", "mountPath": "/var/run/creds", "readOnly": True},
    ]
    app["env"] += [
        {"name": "MARKER", "value": "/shared/marker"},
        {"name": "KEY_FILE", "value": "/var/run/creds/key"},
        {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
    ]
    cluster.apply(deployment, "-n", namespace)
    (pod,) = cluster.wait_pods(namespace, "app=init")
    ip = pod["status"]["podIP"]
    marker = json.loads(http_get(ip, "/env?name=MARKER")[1])
    key_file = json.loads(http_get(ip, "/env?name=KEY_FILE")[1])
    assert http_get(ip, f"/file?path={marker}") == (200, "from-init")
    assert http_get(ip, f"/file?path={key_file}") == (200, "s3")
    assert http_get(ip, "/env?name=KEY") == (200, '"s3"')
    (init,) = pod["status"]["initContainerStatuses"]
    assert init["state"]["terminated"]["exitCode"] == 0


def test_failing_liveness_probe_restarts_the_container(
    cluster: LocalCluster, namespace: str
) -> None:
    deployment = app_deployment("sick")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbe"] = {
        "httpGet": {"path": "/no-such-path", "port": 8080},
        "initialDelaySeconds": 1,
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    cluster.apply(deployment, "-n", namespace)

    def restarted() -> JSON | None:
        for pod in cluster.pods(namespace, "app=sick"):
            for status in pod.get("status", {}).get("containerStatuses") or []:
                if status.get("restartCount", 0) >= 1 and status.get("lastState"):
                    return dict(status)
        return None

    status = wait_for(restarted, timeout=90, what="a restart after failed liveness probes")
    terminated = status["lastState"]["terminated"]
    assert "Liveness probe failed" in terminated["message"]


def test_namespaces_go_away_even_with_finalizers_nobody_handles(cluster: LocalCluster) -> None:
    group = f"t{uuid.uuid4().hex[:8]}.batchpilot.dev"
    cluster.apply(widget_crd(group))
    try:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s"
        )
        name = cluster.create_namespace("finalizers")
        widget = {
            "apiVersion": f"{group}/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "namespace": name, "finalizers": ["example.com/never"]},
            "spec": {"size": 1},
        }
        cluster.apply(widget)
        cluster.delete_namespace(name)
        wait_for(
            lambda: cluster.api.get_or_none(f"/api/v1/namespaces/{name}") is None,
            timeout=120,
            what=f"namespace {name} to be gone",
        )
    finally:
        cluster.kubectl("delete", "crd", f"widgets.{group}", "--wait=false")


def test_images_can_be_mapped_to_commands(cluster: LocalCluster, namespace: str) -> None:
    pattern = f"example.test/app-{uuid.uuid4().hex[:6]}:*"
    cluster.map_image(pattern, [sys.executable, str(APP)])
    try:
        deployment = app_deployment("mapped")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        container["image"] = pattern.replace("*", "1.0")
        container["args"] = container["args"][1:]  # the image's command names the app
        cluster.apply(deployment, "-n", namespace)
        (pod,) = cluster.wait_pods(namespace, "app=mapped")
        assert http_get(pod["status"]["podIP"], "/ready") == (200, "ok")
    finally:
        cluster.map_image(pattern, None)


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    marker = tmp_path / "got-sigterm"
    script = (
        "import pathlib, signal, sys, time\n"
        "def on_term(signum, frame):\n"
        "    pathlib.Path(sys.argv[1]).write_text('yes')\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    time.sleep(1)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "nodeSelector": LOCAL,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "batchpilot/python:test",
                    "args": ["-c", script, str(marker)],
                }
            ],
        },
    }
    cluster.apply(pod, "-n", namespace)
    (running,) = cluster.wait_pods(namespace, "", count=1)
    pid = container_pid(running)
    wait_for(lambda: "ready" in cluster.pod_log(namespace, "stubborn"), timeout=30, what="start")

    cluster.kubectl("-n", namespace, "delete", "pod", "stubborn", "--wait=false")
    wait_for(
        lambda: not pid_alive(pid), timeout=60, what="the SIGTERM-ignoring process to be killed"
    )
    assert marker.read_text() == "yes", "SIGTERM came first"
    wait_for(lambda: not cluster.pods(namespace), timeout=60, what="the pod to be removed")
