"""Comparing desired children with live objects, and classifying API failures."""

from __future__ import annotations

import urllib3
from kubernetes.client.exceptions import ApiException

from batchpilot_operator import handlers, kube
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.desired import desired_deployment


def bm() -> BatchedModel:
    return BatchedModel.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "generation": 1},
            "spec": {"model": {"uri": "hf://o/m", "task": "embedding"}},
        }
    )


def test_fields_the_server_adds_are_not_drift() -> None:
    want = desired_deployment(bm(), TunedState(1, 32, 5.0, 1))
    live = {
        **want,
        "metadata": {**want["metadata"], "uid": "u", "resourceVersion": "7", "generation": 3},
        "status": {"replicas": 1},
    }
    live["spec"] = {**want["spec"], "progressDeadlineSeconds": 900, "paused": False}
    container = dict(want["spec"]["template"]["spec"]["containers"][0])
    container["terminationMessagePath"] = "/dev/termination-log"
    live["spec"]["template"] = {
        **want["spec"]["template"],
        "spec": {**want["spec"]["template"]["spec"], "containers": [container]},
    }
    assert kube.drift(want, live) == []


def test_changed_values_are_drift_with_their_paths() -> None:
    want = {"spec": {"replicas": 1, "template": {"containers": [{"image": "a", "args": ["x"]}]}}}
    live = {"spec": {"replicas": 3, "template": {"containers": [{"image": "b", "args": []}]}}}
    assert kube.drift(want, live) == [
        ".spec.replicas",
        ".spec.template.containers[0].image",
        ".spec.template.containers[0].args",
    ]
    assert kube.drift({"data": {"k": "v"}}, {}) == [".data"]
    assert kube.drift({"a": {"b": 1}}, {"a": "flat"}) == [".a"]


def test_equal_scalars_in_another_spelling_are_not_drift() -> None:
    assert kube.drift({"port": "8080"}, {"port": 8080}) == []
    assert kube.drift({"wait": 5.0}, {"wait": 5}) == []
    assert kube.drift({"flag": False}, {"flag": "False"}) == [".flag"]


def test_api_failures_are_classified() -> None:
    for status in (409, 429, 500, 503, 504):
        assert isinstance(kube.classify(ApiException(status=status)), kube.TransientError)
    for status in (400, 403, 422):
        assert isinstance(kube.classify(ApiException(status=status)), kube.PermanentError)
    refused = urllib3.exceptions.NewConnectionError(None, "connection refused")  # type: ignore[arg-type]
    assert isinstance(kube.classify(refused), kube.TransientError)


def test_backoff_grows_and_is_capped() -> None:
    delays = [handlers.backoff(retry, cap=60) for retry in range(10)]
    assert 0.8 <= delays[0] <= 1.0
    assert 3.2 <= delays[2] <= 4.0
    assert all(d <= 60 for d in delays)
    assert delays[9] >= 48
