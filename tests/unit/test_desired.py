"""The pure builders: snapshots of every child, and the properties that matter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchpilot_contract import labels, lifecycle
from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.pod import CACHE_DIR
from batchpilot_operator import desired
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.settings import OperatorSettings
from batchpilot_runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("BATCHPILOT_UPDATE_SNAPSHOTS") == "1"


def load_example(name: str, namespace: str = "models") -> BatchedModel:
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body["metadata"].update(namespace=namespace, generation=1, uid="uid-1")
    return BatchedModel.from_body(body)


def make(spec: dict[str, Any], name: str = "m") -> BatchedModel:
    return BatchedModel.from_body(
        {"metadata": {"name": name, "namespace": "ns", "generation": 1}, "spec": spec}
    )


BASIC = {"model": {"uri": "hf://org/model", "task": "embedding"}}

FULL = {
    "model": {
        "uri": "hf://org/private-model",
        "task": "classification",
        "revision": "v1.2",
        "dtype": "bfloat16",
        "trustRemoteCode": True,
    },
    "image": "registry.example.com/batchpilot/runtime:custom",
    "resources": {"gpus": 2, "cpu": "4", "memory": "16Gi"},
    "gpuResourceName": "amd.com/gpu",
    "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "env": [
        {"name": "LOG_LEVEL", "value": "debug"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
    ],
    "replicas": 3,
    "batching": {"maxBatchSize": 16, "maxWaitMs": 2.5, "maxQueue": 100, "requestTimeoutMs": 5000},
}

PVC = {"model": {"uri": "pvc://models/bert/base", "task": "embedding"}}

CASES = {
    "embedding-minilm": lambda: load_example("embedding-minilm.yaml"),
    "classifier-sentiment": lambda: load_example("classifier-sentiment.yaml"),
    "full": lambda: make(FULL, name="full"),
    "pvc": lambda: make(PVC, name="pvc"),
}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's JSON document) as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(bm: BatchedModel) -> str:
    state = TunedState.from_spec(bm.spec, config_generation=1)
    children = desired.desired_children(bm, state)
    return yaml.dump_all(children, Dumper=_Dumper, sort_keys=True, width=100)


@pytest.mark.parametrize("case", sorted(CASES))
def test_children_match_snapshot(case: str) -> None:
    path = SNAPSHOTS / f"{case}.yaml"
    text = render(CASES[case]())
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"missing snapshot {path.name}: BATCHPILOT_UPDATE_SNAPSHOTS=1 pytest"
    assert text == path.read_text(), (
        f"{path.name} differs; if intended: BATCHPILOT_UPDATE_SNAPSHOTS=1 pytest {__file__}"
    )


def state(replicas: int = 1, batch: int = 32, wait: float = 5.0, gen: int = 1) -> TunedState:
    return TunedState(replicas, batch, wait, gen)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_runtime_args_are_the_runtime_cli() -> None:
    bm = make(BASIC)
    args = container(desired.desired_deployment(bm, state()))["args"]
    assert args == [
        "--model", "hf://org/model", "--task", "embedding", "--name", "m",
        "--config", "/etc/batchpilot/batching.json", "--port", "8080",
    ]  # fmt: skip
    assert "--host" not in args


def test_model_argument_folds_the_revision_into_hf_uris() -> None:
    assert desired.model_argument(make(FULL)) == "hf://org/private-model@v1.2"
    assert desired.model_argument(make(BASIC)) == "hf://org/model"


def test_pvc_models_mount_the_claim_where_the_runtime_looks() -> None:
    dep = desired.desired_deployment(make(PVC), state())
    c = container(dep)
    assert c["args"][1] == "pvc://models/bert/base"
    assert {"name": "BATCHPILOT_PVC_ROOT", "value": "/mnt/pvc"} in c["env"]
    assert {"name": "model", "mountPath": "/mnt/pvc/models", "readOnly": True} in c["volumeMounts"]
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    claims = [v for v in volumes if "persistentVolumeClaim" in v]
    assert claims == [
        {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
    ]


def test_batching_change_rewrites_the_configmap_only() -> None:
    before = make(BASIC)
    after = make({**BASIC, "batching": {"maxBatchSize": 8, "maxWaitMs": 1}})
    s1 = TunedState.from_spec(before.spec, 1)
    s2 = TunedState.from_spec(after.spec, 2)
    assert desired.desired_deployment(before, s1) == desired.desired_deployment(after, s2)
    assert desired.desired_service(before, s1) == desired.desired_service(after, s2)
    cm1 = desired.desired_configmap(before, s1)["data"]["batching.json"]
    cm2 = desired.desired_configmap(after, s2)["data"]["batching.json"]
    assert BatchingConfig.from_json(cm2) == BatchingConfig(
        maxBatchSize=8, maxWaitMs=1.0, maxQueue=1024, requestTimeoutMs=30000.0, generation=2
    )
    assert cm1 != cm2


@pytest.mark.parametrize(
    "change",
    [
        {"model": {"uri": "hf://org/other", "task": "embedding"}},
        {"model": {"uri": "hf://org/model", "task": "embedding", "revision": "abc"}},
        {"image": "batchpilot/runtime:0.2.0"},
        {"resources": {"gpus": 1}},
        {"env": [{"name": "A", "value": "1"}]},
    ],
)
def test_model_or_image_change_changes_the_template_hash(change: dict[str, Any]) -> None:
    before = desired.desired_deployment(make(BASIC), state())
    after = desired.desired_deployment(make({**BASIC, **change}), state())
    key = labels.SPEC_HASH_ANNOTATION
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_replicas_come_from_the_tuned_state_not_the_template() -> None:
    bm = make({**BASIC, "replicas": 5})
    one, four = desired.desired_deployment(bm, state(1)), desired.desired_deployment(bm, state(4))
    assert (one["spec"]["replicas"], four["spec"]["replicas"]) == (1, 4)
    assert one["spec"]["template"] == four["spec"]["template"]


def test_gpu_limits_only_when_gpus_are_requested() -> None:
    cpu = container(desired.desired_deployment(make(BASIC), state()))
    assert not any("gpu" in r for part in cpu["resources"].values() for r in part)
    gpu = container(desired.desired_deployment(make(FULL), state()))
    assert gpu["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "amd.com/gpu": "2"},
        "limits": {"memory": "16Gi", "amd.com/gpu": "2"},
    }


def test_pod_is_restricted_probed_and_scraped() -> None:
    dep = desired.desired_deployment(make(BASIC), state())
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/etc/batchpilot": "batching", "/tmp": "tmp", CACHE_DIR: "cache"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["batching"]["configMap"] == {"name": "m-batching"}
    assert "emptyDir" in volumes["tmp"]
    assert "emptyDir" in volumes["cache"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_grace_period_covers_the_runtimes_drain_and_graceful_bound() -> None:
    dep = desired.desired_deployment(make(BASIC), state())
    pod = dep["spec"]["template"]["spec"]
    runtime = Settings(model="/m")
    assert "lifecycle" not in container(dep)  # no preStop hook: the runtime drains itself
    assert pod["terminationGracePeriodSeconds"] >= (
        runtime.drain_delay + runtime.graceful_timeout + lifecycle.SHUTDOWN_MARGIN_SECONDS
    )


def test_labels_and_selector() -> None:
    dep = desired.desired_deployment(make(BASIC, name="emb"), state())
    sel = dep["spec"]["selector"]["matchLabels"]
    assert sel == {
        "app.kubernetes.io/name": "batchpilot-runtime",
        "app.kubernetes.io/instance": "emb",
    }
    for obj in desired.desired_children(make(BASIC, name="emb"), state()):
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "batchpilot-operator"
        assert meta["labels"]["app.kubernetes.io/component"] == "model-server"
    tmpl = dep["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= tmpl.items()
    service = desired.desired_service(make(BASIC, name="emb"), state())
    assert service["spec"]["selector"] == sel
    assert service["spec"]["ports"][0]["port"] == 8080
    assert labels.selector_string("emb") == (
        "app.kubernetes.io/instance=emb,app.kubernetes.io/name=batchpilot-runtime"
    )


def test_configmap_is_the_runtime_contract() -> None:
    cm = desired.desired_configmap(make(BASIC), state(batch=7, wait=3.5, gen=9))
    assert cm["metadata"]["name"] == "m-batching"
    assert set(cm["data"]) == {"batching.json"}
    config = BatchingConfig.from_json(cm["data"]["batching.json"])
    assert (config.max_batch_size, config.max_wait_ms, config.generation) == (7, 3.5, 9)
    assert json.loads(cm["data"]["batching.json"])["maxBatchSize"] == 7
    assert desired.configmap_config(cm) == config
    assert desired.configmap_config(None) is None
    assert desired.configmap_config({"data": {"batching.json": "{not json"}}) is None


def test_image_defaults_to_the_operator_setting() -> None:
    bm = make(BASIC)
    assert container(desired.desired_deployment(bm, state()))["image"] == "batchpilot/runtime:0.1.0"
    custom = OperatorSettings(runtime_image="mirror.local/runtime:9")
    assert container(desired.desired_deployment(bm, state(), custom))["image"] == (
        "mirror.local/runtime:9"
    )
    assert container(desired.desired_deployment(make(FULL), state(), custom))["image"] == (
        "registry.example.com/batchpilot/runtime:custom"
    )


def test_settings_from_env() -> None:
    s = OperatorSettings.from_env(
        {"BATCHPILOT_RUNTIME_IMAGE": "x/y:1", "BATCHPILOT_RESYNC_SECONDS": "5"}
    )
    assert (s.runtime_image, s.resync_seconds) == ("x/y:1", 5.0)
    assert OperatorSettings.from_env({}) == OperatorSettings()
    with pytest.raises(ValueError, match="RESYNC"):
        OperatorSettings.from_env({"BATCHPILOT_RESYNC_SECONDS": "0"})
    with pytest.raises(ValueError, match="PULL_POLICY"):
        OperatorSettings.from_env({"BATCHPILOT_IMAGE_PULL_POLICY": "Sometimes"})
