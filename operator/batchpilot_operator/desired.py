"""Pure builders: the children of a BatchedModel as plain dicts.

Every builder takes the parsed :class:`~batchpilot_operator.api.BatchedModel` and the
:class:`~batchpilot_operator.api.TunedState` to render (the knobs the tuning loop turns:
replicas, batch size, wait, config generation), and does no I/O. Handlers adopt the result
(owner reference) and apply it. Unit tests compare the output with snapshot files.

What goes where, so that a batching change never restarts a pod:
- The Deployment's pod template depends only on the model, image and placement fields of the
  spec (and carries their hash as an annotation); replicas come from the tuned state.
- The ConfigMap carries the batching config (tuned batch size and wait, plus the spec's queue
  and timeout) with a generation that grows on every content change.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from batchpilot_contract import labels as contract_labels
from batchpilot_contract import lifecycle, pod
from batchpilot_contract.batching import CONFIGMAP_KEY, BatchingConfig, configmap_name
from batchpilot_contract.labels import labels, selector_labels
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.settings import OperatorSettings

CONTAINER_NAME = "runtime"
TERMINATION_GRACE_SECONDS = lifecycle.termination_grace_seconds()
"""Covers the runtime's own shutdown at its defaults: the drain delay (serving on, unready,
while endpoints drop the pod; the runtime's rather than a preStop hook, which would need a
shell or ``sleep`` in the image), then the graceful bound, then releasing the models."""
PROGRESS_DEADLINE_SECONDS = 900

_DEFAULT_SETTINGS = OperatorSettings()


def _metadata(bm: BatchedModel, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": bm.namespace, "labels": labels(bm.name)}


def runtime_image(bm: BatchedModel, settings: OperatorSettings = _DEFAULT_SETTINGS) -> str:
    """The image the runtime container runs."""
    return bm.spec.image or settings.runtime_image


def spec_hash(bm: BatchedModel, settings: OperatorSettings = _DEFAULT_SETTINGS) -> str:
    """Hash of every spec field that shapes the pod template (not batching, not replicas).

    Stored as a pod-template annotation: a new value means a new rollout.
    """
    spec = bm.spec
    relevant = {
        "model": spec.model.model_dump(by_alias=True, exclude_none=True),
        "image": runtime_image(bm, settings),
        "resources": spec.resources.model_dump(by_alias=True, exclude_none=True),
        "gpuResourceName": spec.gpu_resource_name,
        "nodeSelector": spec.node_selector or {},
        "tolerations": [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations or []
        ],
        "env": [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env or []],
    }
    digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def model_argument(bm: BatchedModel) -> str:
    """The runtime's ``--model`` value: the URI, with the revision folded into hf:// URIs
    (``hf://org/name@revision``, the runtime's syntax)."""
    model = bm.spec.model
    if model.uri.startswith("hf://") and model.revision:
        return f"{model.uri}@{model.revision}"
    return model.uri


def _pvc_claim(bm: BatchedModel) -> str | None:
    uri = bm.spec.model.uri
    return uri.removeprefix("pvc://").partition("/")[0] if uri.startswith("pvc://") else None


def _env(bm: BatchedModel) -> list[dict[str, Any]]:
    model = bm.spec.model
    env: list[dict[str, Any]] = []
    if model.dtype != "auto":
        env.append({"name": pod.DTYPE_ENV, "value": model.dtype})
    if model.trust_remote_code:
        env.append({"name": pod.TRUST_REMOTE_CODE_ENV, "value": "true"})
        env.append({"name": pod.HF_MODULES_CACHE_ENV, "value": f"{pod.CACHE_DIR}/modules"})
    if _pvc_claim(bm):
        env.append({"name": pod.PVC_ROOT_ENV, "value": pod.PVC_ROOT})
    env += [e.model_dump(by_alias=True, exclude_none=True) for e in bm.spec.env or []]
    return env


def _resources(bm: BatchedModel, settings: OperatorSettings) -> dict[str, Any]:
    """The spec's resources, with the operator's defaults for CPU and memory where the spec
    sets none, so that no runtime pod is unbounded in memory or best-effort by omission."""
    res = bm.spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if res.cpu or settings.default_cpu_request:
        requests["cpu"] = res.cpu or settings.default_cpu_request
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    else:
        if settings.default_memory_request:
            requests["memory"] = settings.default_memory_request
        if settings.default_memory_limit:
            limits["memory"] = settings.default_memory_limit
    if res.gpus > 0:
        requests[bm.spec.gpu_resource_name] = limits[bm.spec.gpu_resource_name] = str(res.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": pod.PORT, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
        "successThreshold": 1,
    }


def _container(bm: BatchedModel, settings: OperatorSettings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": runtime_image(bm, settings),
        "imagePullPolicy": settings.image_pull_policy,
        "args": [
            "--model",
            model_argument(bm),
            "--task",
            bm.spec.model.task,
            "--name",
            bm.name,
            "--config",
            pod.CONFIG_PATH,
            "--port",
            str(pod.PORT),
        ],
        "ports": [{"name": pod.PORT_NAME, "containerPort": pod.PORT, "protocol": "TCP"}],
        # Model loading (and a first download) can take minutes: the startup probe holds the
        # liveness probe off until the server answers, for up to 10 minutes.
        "startupProbe": _probe(pod.LIVE_PATH, period=5, failures=120),
        "livenessProbe": _probe(pod.LIVE_PATH, period=10, failures=3),
        "readinessProbe": _probe(pod.READY_PATH, period=5, failures=3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "batching", "mountPath": pod.CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cache", "mountPath": pod.CACHE_DIR},
        ],
    }
    env = _env(bm)
    if env:
        container["env"] = env
    resources = _resources(bm, settings)
    if resources:
        container["resources"] = resources
    claim = _pvc_claim(bm)
    if claim:
        container["volumeMounts"].append(
            {"name": "model", "mountPath": f"{pod.PVC_ROOT}/{claim}", "readOnly": True}
        )
    return container


def _empty_dir(size_limit: str) -> dict[str, Any]:
    """An emptyDir bounded by ``size_limit``: the kubelet evicts a pod that writes more,
    rather than let it fill the node's disk."""
    return {"sizeLimit": size_limit} if size_limit else {}


def desired_deployment(
    bm: BatchedModel, state: TunedState, settings: OperatorSettings = _DEFAULT_SETTINGS
) -> dict[str, Any]:
    """The runtime Deployment ``<name>``: ``state.replicas`` pods running the model."""
    spec = bm.spec
    volumes: list[dict[str, Any]] = [
        # The whole ConfigMap is mounted (never with subPath, which kubelet does not refresh).
        {"name": "batching", "configMap": {"name": configmap_name(bm.name)}},
        {"name": "tmp", "emptyDir": _empty_dir(settings.tmp_size_limit)},
        {"name": "cache", "emptyDir": _empty_dir(settings.cache_size_limit)},
    ]
    claim = _pvc_claim(bm)
    if claim:
        volumes.append(
            {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": pod.RUN_AS_ID,
            "runAsGroup": pod.RUN_AS_ID,
            "fsGroup": pod.RUN_AS_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(bm, settings)],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(bm, bm.name),
        "spec": {
            "replicas": state.replicas,
            "selector": {"matchLabels": selector_labels(bm.name)},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            # Keep serving capacity during a model change: surge, never go below desired.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(bm.name),
                    "annotations": {
                        **contract_labels.scrape_annotations(),
                        contract_labels.SPEC_HASH_ANNOTATION: spec_hash(bm, settings),
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def desired_service(bm: BatchedModel, state: TunedState) -> dict[str, Any]:
    """The Service ``<name>``: the runtime's port, same number and name, in front of its pods."""
    del state  # the Service does not depend on the tuned state; same signature as the others
    meta = _metadata(bm, bm.name)
    meta["annotations"] = contract_labels.scrape_annotations()
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(bm.name),
            "ports": [
                {"name": pod.PORT_NAME, "port": pod.PORT, "targetPort": pod.PORT, "protocol": "TCP"}
            ],
        },
    }


def desired_batching_config(bm: BatchedModel, state: TunedState) -> BatchingConfig:
    """The runtime's batching config for ``state`` (generation included)."""
    return state.batching_config(bm.spec)


def desired_configmap(bm: BatchedModel, state: TunedState) -> dict[str, Any]:
    """The ConfigMap ``<name>-batching`` holding ``batching.json`` (the runtime contract)."""
    config = desired_batching_config(bm, state)
    meta = _metadata(bm, configmap_name(bm.name))
    meta["annotations"] = {contract_labels.CONFIG_GENERATION_ANNOTATION: str(config.generation)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {CONFIGMAP_KEY: config.to_json()},
    }


def desired_children(
    bm: BatchedModel, state: TunedState, settings: OperatorSettings = _DEFAULT_SETTINGS
) -> list[dict[str, Any]]:
    """Every child, in apply order: the ConfigMap first (the pods mount it)."""
    return [
        desired_configmap(bm, state),
        desired_deployment(bm, state, settings),
        desired_service(bm, state),
    ]


def configmap_config(configmap: dict[str, Any] | None) -> BatchingConfig | None:
    """The batching config a live ConfigMap holds, or None if absent or unreadable."""
    if not configmap:
        return None
    text = (configmap.get("data") or {}).get(CONFIGMAP_KEY)
    if not text:
        return None
    try:
        return BatchingConfig.from_json(text)
    except ValueError:
        return None
