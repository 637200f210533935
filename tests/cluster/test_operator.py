"""The operator against the local control plane: the real kube-apiserver, the real CRD.

Most tests run the operator as a local process (the `batchpilot-operator` console script,
watching only the test's namespace, with the admin kubeconfig); runtime pods are placed on
kwok GPU nodes, where kwok reports them running and ready without running anything. The
Helm test installs the chart and runs the operator as a pod of the local node agent, with
nothing but the chart's RBAC.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml

from batchpilot_contract.batching import configmap_name
from batchpilot_contract.labels import SPEC_HASH_ANNOTATION, selector_labels, selector_string
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.kwokconfig import gpu_toleration
from batchpilot_localcluster.waits import wait_for
from batchpilot_operator import kube, reconcile
from batchpilot_operator.api import TunedState
from batchpilot_operator.loop import TuningLoop
from batchpilot_operator.loopkube import KubeForLoop
from batchpilot_operator.metrics import Scrape
from batchpilot_operator.policy import CurrentState, Decision, Rule
from batchpilot_operator.policy.rules import Note
from policystubs import stub_decision

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "batchedmodels.yaml"
CHART = ROOT / "charts" / "batchpilot"
EXAMPLES = ROOT / "examples"
JSON = dict[str, Any]
T = TypeVar("T")

KWOK_PLACEMENT: JSON = {
    "nodeSelector": {"batchpilot.dev/gpu-node": "true"},
    "tolerations": [gpu_toleration()],
}
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def until(probe: Callable[[], T | None], what: str, timeout: float = 120) -> T:
    return wait_for(probe, timeout=timeout, interval=0.5, what=what)


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=established", "crd/batchedmodels.batchpilot.dev", "--timeout=60s"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Operator:
    """The operator as a local process watching one namespace."""

    def __init__(self, cluster: LocalCluster, namespace: str, log: Path) -> None:
        self.cluster, self.namespace, self.log_path = cluster, namespace, log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cluster.kubeconfig),
            "BATCHPILOT_RESYNC_SECONDS": "30",
        }
        argv = [
            sys.executable,
            "-m",
            "batchpilot_operator",
            "--namespace",
            self.namespace,
            "--standalone",
            "--liveness",
            f"http://127.0.0.1:{self.port}/healthz",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        until(self.health, "the operator's liveness endpoint", timeout=180)

    def health(self) -> JSON | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"the operator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with OPENER.open(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                data: JSON = json.loads(response.read())
                return data
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def operator(
    cluster: LocalCluster, namespace: str, crd: None, tmp_path: Path
) -> Iterator[Operator]:
    op = Operator(cluster, namespace, tmp_path / "operator.log")
    op.start()
    try:
        yield op
    finally:
        op.stop()
    assert "Traceback" not in op.log(), op.log()


# ----------------------------------------------------------------------------------- helpers


class Models:
    """kubectl for BatchedModels and their children in one namespace."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace

    def apply(self, name: str, spec: JSON) -> None:
        manifest = {
            "apiVersion": "batchpilot.dev/v1alpha1",
            "kind": "BatchedModel",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.cluster.apply(manifest, "-n", self.ns)

    def get(self, kind: str, name: str) -> JSON | None:
        result = self.cluster.kubectl(
            "get", "-n", self.ns, kind, name, "-o", "json", "--ignore-not-found", check=False
        )
        assert result.returncode == 0, result.stderr
        if not result.stdout.strip():
            return None
        data: JSON = json.loads(result.stdout)
        return data

    def must(self, kind: str, name: str) -> JSON:
        obj = self.get(kind, name)
        assert obj is not None, f"{kind}/{name} is missing"
        return obj

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.ns, *args, check=check)

    def condition(self, name: str, ctype: str) -> JSON | None:
        bm = self.get("batchedmodel", name)
        for cond in ((bm or {}).get("status") or {}).get("conditions") or []:
            if cond["type"] == ctype:
                return dict(cond)
        return None

    def wait_ready(self, name: str) -> JSON:
        def ready() -> JSON | None:
            bm = self.get("batchedmodel", name)
            status = (bm or {}).get("status") or {}
            conds = {c["type"]: c for c in status.get("conditions") or []}
            settled = (
                conds.get("Ready", {}).get("status") == "True"
                and conds.get("Progressing", {}).get("status") == "False"
                and status.get("observedGeneration") == (bm or {})["metadata"]["generation"]
            )
            return bm if settled else None

        return until(ready, f"BatchedModel {name} to be Ready and settled")

    def configmap_config(self, name: str) -> JSON:
        cm = self.must("configmap", configmap_name(name))
        config: JSON = json.loads(cm["data"]["batching.json"])
        return config


@pytest.fixture
def models(cluster: LocalCluster, namespace: str) -> Models:
    return Models(cluster, namespace)


def kwok_spec(**extra: Any) -> JSON:
    """A BatchedModel spec whose pods land on kwok GPU nodes (ready without running)."""
    return {
        "model": {"uri": "hf://sentence-transformers/all-MiniLM-L6-v2", "task": "embedding"},
        "resources": {"gpus": 1},
        **KWOK_PLACEMENT,
        **extra,
    }


def template(deployment: JSON) -> JSON:
    tmpl: JSON = deployment["spec"]["template"]
    return tmpl


def spec_hash(deployment: JSON) -> str:
    return str(template(deployment)["metadata"]["annotations"][SPEC_HASH_ANNOTATION])


# ------------------------------------------------------------------------------------- tests


def test_examples_create_their_children(
    operator: Operator, models: Models, cluster: LocalCluster, namespace: str
) -> None:
    started = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    deployment = until(lambda: models.get("deployment", "minilm"), "Deployment minilm")
    elapsed = time.monotonic() - started
    print(f"kubectl apply -> Deployment: {elapsed:.2f}s")  # measured, never asserted
    until(lambda: models.get("service", "minilm"), "Service minilm")
    until(lambda: models.get("configmap", "minilm-batching"), "ConfigMap minilm-batching")

    # The Deployment: the runtime's CLI, probes, the ConfigMap mounted, owned by the model.
    (container,) = template(deployment)["spec"]["containers"]
    assert container["image"] == "batchpilot/runtime:0.1.0"
    assert container["args"] == [
        "--model", "hf://sentence-transformers/all-MiniLM-L6-v2", "--task", "embedding",
        "--name", "minilm", "--config", "/etc/batchpilot/batching.json", "--port", "8080",
    ]  # fmt: skip
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in template(deployment)["spec"]["volumes"]}
    assert volumes["batching"]["configMap"]["name"] == "minilm-batching"
    bm = models.must("batchedmodel", "minilm")
    (owner,) = deployment["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "BatchedModel",
        "minilm",
        bm["metadata"]["uid"],
        True,
    )
    assert template(deployment)["metadata"]["annotations"]["prometheus.io/scrape"] == "true"

    # The ConfigMap holds the runtime's BatchingConfig document.
    assert models.configmap_config("minilm") == {
        "generation": 1,
        "maxBatchSize": 32,
        "maxQueue": 1024,
        "maxWaitMs": 5.0,
        "requestTimeoutMs": 30000.0,
    }
    service = models.must("service", "minilm")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["selector"] == selector_labels("minilm")

    # The classifier asks for a GPU on nodes labelled nvidia.com/gpu.present, which this
    # cluster does not have: its status says so.
    classifier = until(lambda: models.get("deployment", "sentiment"), "Deployment sentiment")
    (gpu_container,) = template(classifier)["spec"]["containers"]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    degraded = until(
        lambda: (c := models.condition("sentiment", "Degraded")) and c["status"] == "True" and c,
        "the classifier to be Degraded (no node matches)",
    )
    assert degraded["reason"] == "Unschedulable"
    assert "sentiment-" in degraded["message"]


def test_get_bm_prints_the_columns(operator: Operator, models: Models) -> None:
    models.apply("cols", kwok_spec(replicas=2))
    models.wait_ready("cols")
    table = models.kubectl("get", "bm").stdout.splitlines()
    assert table[0].split() == [
        "NAME", "READY", "BATCH", "WAIT-MS", "QUEUE", "RPS", "P95-MS", "STATUS", "AGE",
    ]  # fmt: skip
    row = table[1].split()
    assert row[:4] == ["cols", "2/2", "32", "5"]
    assert row[4] == "Ready"  # QUEUE, RPS and P95-MS stay empty until the loop observes
    wide = models.kubectl("get", "bm", "cols", "-o", "wide").stdout.splitlines()
    assert "hf://sentence-transformers/all-MiniLM-L6-v2" in wide[1]


def test_batching_edit_rewrites_only_the_configmap(operator: Operator, models: Models) -> None:
    models.apply("batch", kwok_spec())
    before = models.wait_ready("batch")
    deployment = models.must("deployment", "batch")
    config = models.configmap_config("batch")

    models.kubectl(
        "patch", "bm", "batch", "--type=merge",
        "-p", '{"spec": {"batching": {"maxBatchSize": 8, "maxWaitMs": 2.5}}}',
    )  # fmt: skip
    new = until(
        lambda: (c := models.configmap_config("batch"))["maxBatchSize"] == 8 and c,
        "the ConfigMap to carry maxBatchSize 8",
    )
    assert new["maxWaitMs"] == 2.5
    assert new["generation"] == config["generation"] + 1
    after = models.wait_ready("batch")
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert (after["status"]["maxBatchSize"], after["status"]["configGeneration"]) == (
        8,
        new["generation"],
    )
    # No rollout: the Deployment was not touched at all.
    unchanged = models.must("deployment", "batch")
    assert unchanged["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert template(unchanged) == template(deployment)


def rolled_out(deployment: JSON, old_hash: str) -> JSON | None:
    return deployment if spec_hash(deployment) != old_hash else None


def test_model_edit_rolls_the_deployment(operator: Operator, models: Models) -> None:
    models.apply("roll", kwok_spec())
    models.wait_ready("roll")
    deployment = models.must("deployment", "roll")
    config = models.configmap_config("roll")

    models.kubectl(
        "patch", "bm", "roll", "--type=merge",
        "-p", '{"spec": {"model": {"uri": "hf://BAAI/bge-small-en-v1.5"}}}',
    )  # fmt: skip
    rolled = until(
        lambda: rolled_out(models.must("deployment", "roll"), spec_hash(deployment)),
        "a new pod template",
    )
    assert rolled["metadata"]["generation"] > deployment["metadata"]["generation"]
    (container,) = template(rolled)["spec"]["containers"]
    assert container["args"][:2] == ["--model", "hf://BAAI/bge-small-en-v1.5"]
    models.wait_ready("roll")
    assert models.configmap_config("roll") == config  # the batching config did not change


def test_drift_is_put_back(operator: Operator, models: Models) -> None:
    models.apply("drift", kwok_spec())
    models.wait_ready("drift")

    # Scaled by hand: scaled back.
    models.kubectl("scale", "deployment", "drift", "--replicas=3")
    until(
        lambda: models.must("deployment", "drift")["spec"]["replicas"] == 1,
        "the Deployment to be scaled back to 1",
    )
    # Edited by hand: the operator's fields put back, its template hash intact.
    models.kubectl("set", "image", "deployment/drift", "runtime=example.invalid/other:1")
    until(
        lambda: (
            template(models.must("deployment", "drift"))["spec"]["containers"][0]["image"]
            == "batchpilot/runtime:0.1.0"
        ),
        "the runtime image to be put back",
    )
    # ConfigMap rewritten by hand: its content comes back.
    models.kubectl(
        "patch", "configmap", "drift-batching", "--type=merge",
        "-p", '{"data": {"batching.json": "{\\"maxBatchSize\\": 999}"}}',
    )  # fmt: skip
    until(
        lambda: models.configmap_config("drift").get("maxBatchSize") == 32,
        "the ConfigMap content to be put back",
    )
    # Service deleted: recreated.
    uid = models.must("service", "drift")["metadata"]["uid"]
    models.kubectl("delete", "service", "drift", "--wait=true")
    until(
        lambda: (s := models.get("service", "drift")) and s["metadata"]["uid"] != uid,
        "the Service to be recreated",
    )
    # The scale subresource drives the replicas (autoscaling is off).
    models.kubectl("scale", "bm", "drift", "--replicas=2")
    until(
        lambda: models.must("deployment", "drift")["spec"]["replicas"] == 2,
        "kubectl scale bm to reach the Deployment",
    )
    bm = models.wait_ready("drift")
    assert (bm["status"]["replicas"], bm["status"]["ready"]) == (2, "2/2")
    assert bm["status"]["selector"] == selector_string("drift")
    events = models.kubectl(
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=drift,involvedObject.kind=BatchedModel",
    ).stdout
    assert "Updated Deployment drift" in events


def absent(models: Models, kind: str, name: str) -> bool:
    return models.get(kind, name) is None


def test_delete_removes_every_child(operator: Operator, models: Models) -> None:
    models.apply("gone", kwok_spec())
    models.wait_ready("gone")
    models.kubectl("delete", "bm", "gone", "--wait=true")
    for kind, name in (
        ("deployment", "gone"),
        ("service", "gone"),
        ("configmap", "gone-batching"),
    ):
        until(partial(absent, models, kind, name), f"{kind}/{name} to be collected")
    until(
        lambda: (
            not models.kubectl(
                "get", "pods", "-l", selector_string("gone"), "-o", "name"
            ).stdout.strip()
        ),
        "the runtime pods to be collected",
    )


def snapshot(models: Models, name: str) -> JSON:
    """Everything a restart must leave alone: the children's versions, the status."""
    bm = models.must("batchedmodel", name)
    return {
        "status": bm["status"],
        "bm-spec": bm["spec"],
        **{
            kind: models.must(kind, child)["metadata"]["resourceVersion"]
            for kind, child in (
                ("deployment", name),
                ("service", name),
                ("configmap", configmap_name(name)),
            )
        },
    }


def test_restart_changes_nothing(operator: Operator, models: Models) -> None:
    models.apply("steady", kwok_spec(replicas=2))
    models.wait_ready("steady")
    before = snapshot(models, "steady")
    operator.stop()
    operator.start()
    # Wait until the restarted process has resumed the model (its on.resume reconcile).
    until(
        lambda: (h := operator.health()) and h.get("reconciles", 0) >= 1,
        "the restarted operator to reconcile",
    )
    assert snapshot(models, "steady") == before


def test_restart_mid_reconcile_converges_without_duplicates(
    operator: Operator, models: Models
) -> None:
    operator.stop()
    models.apply("mid", kwok_spec())
    operator.start()
    # Stopped again as soon as it starts creating children, then started for good.
    until(lambda: models.get("configmap", "mid-batching"), "the first child")
    operator.stop()
    operator.start()
    models.wait_ready("mid")
    for kind in ("deployments", "services", "configmaps"):
        names = models.kubectl(
            "get", kind, "-l", "app.kubernetes.io/instance=mid", "-o", "name"
        ).stdout.split()
        assert len(names) == 1, names


def test_pod_failures_show_as_degraded(operator: Operator, models: Models) -> None:
    models.apply(
        "broken",
        {
            "model": {"uri": "hf://org/model", "task": "embedding"},
            "image": "example.invalid/not-a-runtime:1",
            "nodeSelector": {"batchpilot.dev/local-node": "true"},
        },
    )
    degraded = until(
        lambda: (c := models.condition("broken", "Degraded")) and c["status"] == "True" and c,
        "Degraded=True from the pod's reason",
    )
    assert degraded["reason"] not in ("AsExpected", "Unschedulable")
    assert "broken-" in degraded["message"]
    ready = models.condition("broken", "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", degraded["reason"])
    status_column = models.kubectl("get", "bm", "broken").stdout.splitlines()[1].split()[-2]
    assert status_column == degraded["reason"]
    events = models.kubectl(
        "get", "events", "--field-selector", "involvedObject.name=broken"
    ).stdout
    assert degraded["reason"] in events


def test_a_child_the_api_server_refuses_shows_as_degraded(
    operator: Operator, models: Models
) -> None:
    # The CRD does not check toleration keys; the Deployment's validation does.
    models.apply(
        "refused", {**kwok_spec(), "tolerations": [{"key": "not a key", "operator": "Exists"}]}
    )
    degraded = until(
        lambda: (c := models.condition("refused", "Degraded")) and c["status"] == "True" and c,
        "Degraded=True for the refused Deployment",
    )
    assert degraded["reason"] == "InvalidChild"
    assert "tolerations" in degraded["message"]
    assert models.get("deployment", "refused") is None
    # Fixing the spec clears it.
    models.apply("refused", kwok_spec())
    models.wait_ready("refused")
    fixed = models.condition("refused", "Degraded")
    assert fixed is not None
    assert (fixed["status"], fixed["reason"]) == ("False", "AsExpected")


def test_ready_transition_time_moves_only_on_flips(operator: Operator, models: Models) -> None:
    models.apply("flip", kwok_spec())
    models.wait_ready("flip")
    ready = models.condition("flip", "Ready")
    assert ready is not None
    # A batching change is a new generation with Ready staying True: the time stays.
    models.kubectl(
        "patch", "bm", "flip", "--type=merge", "-p", '{"spec": {"batching": {"maxWaitMs": 1}}}'
    )
    models.wait_ready("flip")
    again = models.condition("flip", "Ready")
    assert again is not None
    assert again["lastTransitionTime"] == ready["lastTransitionTime"]
    assert again["observedGeneration"] == ready["observedGeneration"] + 1


INVALID: list[tuple[str, JSON, str]] = [
    ("replicas-type", {"replicas": "two"}, "spec.replicas"),
    ("replicas-negative", {"replicas": -1}, "spec.replicas"),
    ("batch-zero", {"batching": {"maxBatchSize": 0}}, "spec.batching.maxBatchSize"),
    ("batch-huge", {"batching": {"maxBatchSize": 100000}}, "spec.batching.maxBatchSize"),
    ("wait-negative", {"batching": {"maxWaitMs": -1}}, "spec.batching.maxWaitMs"),
    ("unknown-task", {"model": {"uri": "hf://a/b", "task": "translation"}}, "spec.model.task"),
    ("bad-uri", {"model": {"uri": "s3://bucket/m", "task": "embedding"}}, "spec.model.uri"),
    (
        "pvc-dotdot",
        {"model": {"uri": "pvc://claim/../../../../etc", "task": "embedding"}},
        "spec.model.uri",
    ),
    ("missing-model", {"model": None, "replicas": 1}, "spec.model"),
    (
        "min-gt-max-replicas",
        {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "spec.autoscaling.minReplicas",
    ),
    (
        "min-gt-max-batch",
        {"autoscaling": {"minBatchSize": 64, "maxBatchSize": 8}},
        "spec.autoscaling.minBatchSize",
    ),
    (
        "min-gt-max-wait",
        {"autoscaling": {"minWaitMs": 10, "maxWaitMs": 1}},
        "spec.autoscaling.minWaitMs",
    ),
    ("gpus-too-many", {"resources": {"gpus": 100}}, "spec.resources.gpus"),
    ("memory-not-quantity", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    ("cpu-not-quantity", {"resources": {"cpu": "1.2.3"}}, "spec.resources.cpu"),
    (
        "node-selector-value",
        {"nodeSelector": {"pool": "not a label value"}},
        "spec.nodeSelector.pool",
    ),
    (
        "env-value-and-from",
        {
            "env": [
                {
                    "name": "A",
                    "value": "1",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ]
        },
        "spec.env[0]",
    ),
    (
        "toleration-operator",
        {"tolerations": [{"key": "k", "operator": "Maybe"}]},
        "spec.tolerations[0].operator",
    ),
    ("autoscaling-type", {"autoscaling": {"enabled": "yes"}}, "spec.autoscaling.enabled"),
    (
        "env-reserved",
        {"env": [{"name": "BATCHPILOT_TRUST_REMOTE_CODE", "value": "true"}]},
        "spec.env[0].name",
    ),
    ("env-reserved-hf", {"env": [{"name": "HF_MODULES_CACHE", "value": "/x"}]}, "spec.env[0].name"),
]


@pytest.mark.parametrize(("case", "change", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_are_refused_by_the_api_server(
    cluster: LocalCluster, namespace: str, crd: None, case: str, change: JSON, field: str
) -> None:
    spec: JSON = {"model": {"uri": "hf://org/model", "task": "embedding"}}
    spec.update(change)
    spec = {k: v for k, v in spec.items() if v is not None}
    manifest = {
        "apiVersion": "batchpilot.dev/v1alpha1",
        "kind": "BatchedModel",
        "metadata": {"name": f"bad-{case}"},
        "spec": spec,
    }
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0, f"{case} was accepted"
    assert field in result.stderr, result.stderr
    assert cluster.kubectl("get", "bm", "-n", namespace, "-o", "name").stdout.strip() == ""


def test_edge_specs_are_accepted_by_the_api_server(
    cluster: LocalCluster, namespace: str, crd: None
) -> None:
    # What the CRD's rules must keep allowing: a tuning knob in env, a dotted pvc:// path.
    manifest = {
        "apiVersion": "batchpilot.dev/v1alpha1",
        "kind": "BatchedModel",
        "metadata": {"name": "edges"},
        "spec": {
            "model": {"uri": "pvc://models/.cache/v1..2/bert", "task": "embedding"},
            "env": [
                {"name": "BATCHPILOT_THREADS", "value": "1"},
                {"name": "HF_TOKEN", "value": "t"},
            ],
        },
    }
    result = cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "--dry-run=server",
        "-f",
        "-",
        input=json.dumps(manifest),
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_invalid_name_is_refused(cluster: LocalCluster, namespace: str, crd: None) -> None:
    manifest = {
        "apiVersion": "batchpilot.dev/v1alpha1",
        "kind": "BatchedModel",
        "metadata": {"name": "model.v2"},
        "spec": {"model": {"uri": "hf://org/model", "task": "embedding"}},
    }
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False
    )
    assert result.returncode != 0
    assert "metadata.name" in result.stderr


def test_helm_install_runs_the_operator_with_only_the_charts_rbac(
    cluster: LocalCluster, namespace: str
) -> None:
    release = f"bp-{namespace}"[:40].rstrip("-")
    values = {"watchNamespaces": [namespace], "operator": {"resyncSeconds": 30}}
    installed = cluster.helm(
        "install", release, str(CHART), "-n", namespace, "--wait", "--timeout", "5m",
        "-f", "-", input=yaml.safe_dump(values),
    )  # fmt: skip
    try:
        assert "rollout status deployment/" in installed.stdout  # NOTES
        assert "kubectl get bm" in installed.stdout
        pods = cluster.wait_pods(namespace, "app.kubernetes.io/component=operator", count=1)
        (pod,) = pods
        assert pod["spec"]["serviceAccountName"].startswith(release)
        # The operator pod (the node agent runs it with its ServiceAccount's token) serves a
        # model end to end: children created, status written, Events posted.
        models = Models(cluster, namespace)
        models.apply("charted", kwok_spec())
        bm = models.wait_ready("charted")
        assert bm["status"]["ready"] == "1/1"
        for kind, name in (("service", "charted"), ("configmap", "charted-batching")):
            assert models.get(kind, name) is not None
        events = models.kubectl(
            "get", "events", "--field-selector", "involvedObject.name=charted"
        ).stdout
        assert "Created Deployment charted" in events
        models.kubectl("scale", "deployment", "charted", "--replicas=2")
        until(
            lambda: models.must("deployment", "charted")["spec"]["replicas"] == 1,
            "drift corrected by the charted operator",
        )
        log = cluster.pod_log(namespace, pod["metadata"]["name"])
        assert "Forbidden" not in log
        assert "403" not in log
    finally:
        cluster.helm("uninstall", release, "-n", namespace, "--wait", check=False)


def api_clients(cluster: LocalCluster) -> kube.Clients:
    configuration = kubernetes.client.Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.kubeconfig), client_configuration=configuration
    )
    return kube.Clients(kubernetes.client.ApiClient(configuration))


async def no_metrics(targets: Mapping[str, str]) -> Scrape:
    """kwok pods serve nothing: every pod missing, as a scrape of them would find."""
    return Scrape(time=time.monotonic(), samples={}, missing=dict.fromkeys(targets, "kwok"))


TUNED_SPEC = kwok_spec(autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 4})


def scale_up(_obs: Any, cur: CurrentState, _spec: Any, now: float) -> Decision:
    return stub_decision(
        *("scale-up+retune", 3, 64, 8.0, True, True),
        Note.of(Rule.SCALE_UP, replicas=3),
        recommendations=((now - 5.0, 1), (now, 3)),
        utilization_target=0.75,
        last_overload=now,
        scale_down_delay_s=240.0,
        needed_replicas=3,
    )


async def test_the_loop_writes_its_state_and_the_reconcile_renders_it(
    cluster: LocalCluster, namespace: str, crd: None, models: Models, tmp_path: Path
) -> None:
    """The tuning loop against the real API server: one conditional status write (its state
    in status.loop, the decision), then the reconcile renders replicas on the Deployment and
    batch size and wait in the ConfigMap from spec and status; a new operator process resumes
    the loop's state from status and reverts nothing."""
    models.apply("tuned", TUNED_SPEC)
    clients = api_clients(cluster)
    first = reconcile.converge(namespace, "tuned", api_clients=clients)
    assert first is not None
    assert first.state == TunedState(1, 32, 5.0, 1)

    loop = TuningLoop(
        namespace,
        "tuned",
        KubeForLoop(api_clients=clients),
        scrape=no_metrics,
        policy=scale_up,
        propagation_timeout_s=1.0,
    )
    result = await loop.tick()
    assert result is not None
    assert not result.conflict
    assert [e.reason for e in result.events] == ["ScaledUp"]
    config = models.configmap_config("tuned")
    assert (config["maxBatchSize"], config["maxWaitMs"], config["generation"]) == (64, 8.0, 2)
    assert models.must("deployment", "tuned")["spec"]["replicas"] == 3
    status = models.must("batchedmodel", "tuned")["status"]
    assert status["tuned"] == {
        "replicas": 3,
        "maxBatchSize": 64,
        "maxWaitMs": 8.0,
        "configGeneration": 2,
        "fromSpec": {"replicas": 1, "maxBatchSize": 32, "maxWaitMs": 5.0},
    }
    learnt = status["loop"]
    assert (learnt["replicas"], learnt["maxBatchSize"], learnt["maxWaitMs"]) == (3, 64, 8.0)
    assert (learnt["utilizationTarget"], learnt["scaleDownDelaySeconds"]) == (0.75, 240.0)
    assert [r["replicas"] for r in learnt["recommendations"]] == [1, 3]
    assert {"lastScaleUp", "lastConfigChange", "lastOverload"} <= set(learnt)
    assert status["lastDecision"]["neededReplicas"] == 3  # in the CRD's schema: not pruned
    # No pod reports a config yet: status shows the one first written as in force.
    assert (status["maxBatchSize"], status["configGeneration"]) == (32, 1)

    # An operator process started now resumes from status: nothing is reverted, and its own
    # loop (every pod missing: a hold) carries the memory on instead of starting afresh.
    op = Operator(cluster, namespace, tmp_path / "operator.log")
    op.start()
    try:
        held = until(
            lambda: (
                (bm := models.must("batchedmodel", "tuned"))["status"]["lastDecision"]["reason"]
                != "scale up to 3"
                and bm
            ),
            "the operator's own tick",
        )
        status = held["status"]
        assert status["lastDecision"]["action"] == "hold"
        assert "neededReplicas" not in status["lastDecision"]  # cleared: nothing sized
        assert status["loop"] == learnt
        models.wait_ready("tuned")
        assert models.must("deployment", "tuned")["spec"]["replicas"] == 3
        assert models.configmap_config("tuned")["generation"] == 2
    finally:
        op.stop()
    assert "Traceback" not in op.log(), op.log()

    # Autoscaling turned off: the loop's fields leave status, the spec's values come back.
    off = '{"spec": {"autoscaling": {"enabled": false}}}'
    models.kubectl("patch", "bm", "tuned", "--type=merge", "-p", off)
    reconcile.converge(namespace, "tuned", api_clients=clients)
    status = models.must("batchedmodel", "tuned")["status"]
    assert "lastDecision" not in status
    assert "loop" not in status
    assert status["tuned"]["replicas"] == 1
    assert (status["maxBatchSize"], status["configGeneration"]) == (32, 3)


async def test_a_spec_edit_between_the_loops_read_and_write_wins(
    cluster: LocalCluster, namespace: str, crd: None, models: Models
) -> None:
    """The loop's status write is conditional on the resourceVersion it read: a spec edit
    made while it decides makes the API server refuse the write (409), and the edit wins."""
    models.apply("raced", TUNED_SPEC)
    clients = api_clients(cluster)
    reconcile.converge(namespace, "raced", api_clients=clients)
    read = models.must("batchedmodel", "raced")

    def edited_meanwhile(obs: Any, cur: CurrentState, spec: Any, now: float) -> Decision:
        models.kubectl("scale", "bm", "raced", "--replicas=2")  # between the read and the write
        return scale_up(obs, cur, spec, now)

    loop = TuningLoop(
        namespace,
        "raced",
        KubeForLoop(api_clients=clients),
        scrape=no_metrics,
        policy=edited_meanwhile,
        propagation_timeout_s=1.0,
    )
    result = await loop.tick()
    assert result is not None
    assert result.conflict
    assert result.events == []
    bm = models.must("batchedmodel", "raced")
    assert bm["metadata"]["generation"] == read["metadata"]["generation"] + 1
    assert "loop" not in bm["status"]  # the decision was not written
    assert "lastDecision" not in bm["status"]
    # The write the loop attempted, with the version it had read, is refused by the server.
    stale = read["metadata"]["resourceVersion"]
    with pytest.raises(kubernetes.client.exceptions.ApiException) as refused:
        kube.patch_status(clients, namespace, "raced", {"loop": {"replicas": 3}}, stale)
    assert refused.value.status == 409
    # The edit's reconcile renders it; the next tick starts from it.
    done = reconcile.converge(namespace, "raced", api_clients=clients)
    assert done is not None
    assert done.state.replicas == 2
    assert models.must("deployment", "raced")["spec"]["replicas"] == 2
    seen: list[CurrentState] = []

    def hold(_obs: Any, cur: CurrentState, *_: Any) -> Decision:
        seen.append(cur)
        knobs = (cur.replicas, cur.max_batch_size, cur.max_wait_ms)
        return stub_decision("hold", *knobs, False, False)

    loop.policy = hold
    again = await loop.tick()
    assert again is not None
    assert not again.conflict
    assert seen[0].replicas == 2
    assert models.must("batchedmodel", "raced")["status"]["loop"]["replicas"] == 2
