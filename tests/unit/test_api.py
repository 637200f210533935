"""The BatchedModel API: parsing, validation rules and the tuned state."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator import desired
from batchpilot_operator.api import (
    RUNTIME_TUNING_ENV,
    BatchedModel,
    BatchedModelSpec,
    BatchedModelStatus,
    TunedState,
    resolve_state,
    settle_generation,
)
from batchpilot_runtime.settings import Settings

BASIC: dict[str, Any] = {"model": {"uri": "hf://org/model", "task": "embedding"}}


def spec(**changes: Any) -> BatchedModelSpec:
    return BatchedModelSpec.model_validate({**BASIC, **changes})


def test_defaults() -> None:
    s = spec()
    assert (s.replicas, s.gpu_resource_name, s.model.dtype, s.model.trust_remote_code) == (
        1,
        "nvidia.com/gpu",
        "auto",
        False,
    )
    assert (s.batching.max_batch_size, s.batching.max_wait_ms) == (32, 5.0)
    assert s.autoscaling.enabled is False


@pytest.mark.parametrize(
    "uri",
    [
        "hf://sentence-transformers/all-MiniLM-L6-v2",
        "hf://gpt2",
        "file:///models/bert",
        "pvc://models/bert/base",
        "pvc://models",
        "pvc://models/",
        "pvc://models/./bert",
        "pvc://models/.cache/..bert/v1..2/...",
    ],
)
def test_model_uris_accepted(uri: str) -> None:
    assert spec(model={"uri": uri, "task": "embedding"}).model.uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/m",
        "hf://",
        "file://relative",
        "pvc://Bad_Claim/x",
        "org/name",
        "hf://a/b/c",
        "pvc://claim/../../../../etc",
        "pvc://claim/..",
        "pvc://claim/bert/../other",
        "pvc://claim//..",
    ],
)
def test_model_uris_refused(uri: str) -> None:
    with pytest.raises(ValidationError, match="uri"):
        spec(model={"uri": uri, "task": "embedding"})


def test_emulated_accelerator_uris_name_a_profile() -> None:
    assert spec(model={"uri": "emulated://bert-large-l4", "task": "embedding"}).model.uri
    for bad in ("emulated://", "emulated://Big_GPU", "emulated://a/b", "emulated://-x"):
        with pytest.raises(ValidationError, match="uri"):
            spec(model={"uri": bad, "task": "embedding"})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": {"uri": "hf://a/b", "task": "translation"}}, "task"),
        ({"replicas": -1}, "replicas"),
        ({"replicas": "two"}, "replicas"),
        ({"batching": {"maxBatchSize": 0}}, "maxBatchSize"),
        ({"batching": {"maxWaitMs": -1}}, "maxWaitMs"),
        ({"resources": {"cpu": "lots"}}, "cpu"),
        ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "minReplicas"),
        ({"autoscaling": {"minBatchSize": 64, "maxBatchSize": 8}}, "minBatchSize"),
        ({"autoscaling": {"minWaitMs": 10, "maxWaitMs": 1}}, "minWaitMs"),
        (
            {
                "env": [
                    {
                        "name": "A",
                        "value": "1",
                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                    }
                ]
            },
            "valueFrom",
        ),
        ({"env": [{"name": "A", "valueFrom": {}}]}, "secretKeyRef"),
    ],
)
def test_invalid_specs_are_refused_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        spec(**changes)


@pytest.mark.parametrize(
    "name",
    [
        "BATCHPILOT_TRUST_REMOTE_CODE",
        "BATCHPILOT_DTYPE",
        "BATCHPILOT_PVC_ROOT",
        "BATCHPILOT_MODEL",
        "BATCHPILOT_PORT",
        "BATCHPILOT_MAX_BATCH_SIZE",
        "BATCHPILOT_CONFIG",
        "HF_MODULES_CACHE",
    ],
)
def test_env_names_the_operator_sets_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match=rf"(?s)env\.0\.name.*{name} is reserved"):
        spec(env=[{"name": name, "value": "true"}])


def test_the_runtime_tuning_knobs_may_be_set_in_env() -> None:
    names = [*RUNTIME_TUNING_ENV, "LOG_LEVEL", "HF_TOKEN", "BATCHPILOT"]
    s = spec(env=[{"name": n, "value": "1"} for n in names])
    assert [e.name for e in s.env or []] == names
    assert "BATCHPILOT_THREADS" in RUNTIME_TUNING_ENV


def test_every_other_runtime_setting_and_the_operators_env_are_reserved() -> None:
    settings = {f"BATCHPILOT_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    assert set(RUNTIME_TUNING_ENV) <= settings
    for name in settings - set(RUNTIME_TUNING_ENV):
        with pytest.raises(ValidationError, match="reserved"):
            spec(env=[{"name": name, "value": "x"}])
    # Whatever the operator puts in the runtime container's env is reserved.
    full = {
        "model": {
            "uri": "pvc://models/bert",
            "task": "embedding",
            "dtype": "float16",
            "trustRemoteCode": True,
        }
    }
    bm = BatchedModel.from_body({"metadata": {"name": "m"}, "spec": full})
    deployment = desired.desired_deployment(bm, TunedState(1, 8, 1.0))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    set_by_operator = {e["name"] for e in container["env"]}
    assert set_by_operator >= {"BATCHPILOT_TRUST_REMOTE_CODE", "HF_MODULES_CACHE"}
    for name in set_by_operator:
        with pytest.raises(ValidationError, match="reserved"):
            spec(env=[{"name": name, "value": "x"}])


def test_missing_model_is_refused() -> None:
    with pytest.raises(ValidationError, match="model"):
        BatchedModelSpec.model_validate({"replicas": 1})


def test_from_body_tolerates_a_foreign_status() -> None:
    body = {
        "metadata": {"name": "m", "namespace": "ns", "generation": 2},
        "spec": BASIC,
        "status": {"conditions": [{"type": "Ready"}], "tuned": "garbage"},
    }
    bm = BatchedModel.from_body(body)
    assert bm.status == BatchedModelStatus()
    assert (bm.name, bm.namespace, bm.metadata.generation) == ("m", "ns", 2)


def test_tuned_state_round_trips_through_status() -> None:
    state = TunedState(3, 16, 2.5, 7, basis=(2, 32, 5.0))
    status = BatchedModelStatus.model_validate({"tuned": state.to_status()})
    back = TunedState.from_status(status)
    assert back == state
    assert back is not None
    assert back.basis == (2, 32, 5.0)
    assert state.to_status() == {
        "replicas": 3,
        "maxBatchSize": 16,
        "maxWaitMs": 2.5,
        "configGeneration": 7,
        "fromSpec": {"replicas": 2, "maxBatchSize": 32, "maxWaitMs": 5.0},
    }
    assert TunedState.from_status(BatchedModelStatus()) is None


def test_state_follows_the_spec_when_autoscaling_is_off() -> None:
    s = spec(replicas=3, batching={"maxBatchSize": 8, "maxWaitMs": 1})
    assert resolve_state(s, None) == TunedState(3, 8, 1.0, 0)
    assert resolve_state(s, TunedState(9, 99, 9.0, 4)) == TunedState(3, 8, 1.0, 4)


def test_state_is_kept_within_bounds_when_autoscaling_is_on() -> None:
    bounds = {
        "enabled": True,
        "minReplicas": 2,
        "maxReplicas": 5,
        "minBatchSize": 4,
        "maxBatchSize": 64,
        "minWaitMs": 1,
        "maxWaitMs": 10,
    }
    s = spec(replicas=1, batching={"maxBatchSize": 128, "maxWaitMs": 0}, autoscaling=bounds)
    # The starting point is the spec, clamped.
    assert resolve_state(s, None) == TunedState(2, 64, 1.0, 0)
    # The loop's state is kept while inside the bounds ...
    assert resolve_state(s, TunedState(4, 32, 5.0, 6)) == TunedState(4, 32, 5.0, 6)
    # ... and pulled inside when the bounds are edited.
    assert resolve_state(s, TunedState(9, 2, 50.0, 6)) == TunedState(5, 4, 10.0, 6)


def test_config_generation_grows_only_on_content_change() -> None:
    s = spec(batching={"maxBatchSize": 8})
    fresh = settle_generation(TunedState(1, 8, 5.0, 0), s, None)
    assert fresh.config_generation == 1
    written = fresh.batching_config(s)
    # Same content: the written generation stays.
    assert settle_generation(fresh, s, written).config_generation == 1
    # New content: one above both the written and the persisted generation.
    changed = TunedState(1, 16, 5.0, 1)
    assert settle_generation(changed, s, written).config_generation == 2
    ahead = BatchingConfig(maxBatchSize=99, generation=40)
    assert settle_generation(changed, s, ahead).config_generation == 41
    # A vanished ConfigMap is re-issued under a new number, never an old one.
    assert settle_generation(TunedState(1, 8, 5.0, 5), s, None).config_generation == 6
    # maxQueue and requestTimeoutMs are content too.
    s2 = spec(batching={"maxBatchSize": 8, "maxQueue": 10})
    assert settle_generation(fresh, s2, written).config_generation == 2


def test_a_spec_edit_restarts_the_tuning_from_the_new_value() -> None:
    auto = {"enabled": True, "minReplicas": 1, "maxReplicas": 8}
    s1 = spec(replicas=2, batching={"maxBatchSize": 32, "maxWaitMs": 5}, autoscaling=auto)
    start = resolve_state(s1, None)
    assert start.basis == (2, 32, 5.0)
    tuned = replace(start, replicas=6, max_batch_size=64, max_wait_ms=12.0)
    # Unrelated spec edits keep what the loop chose.
    assert resolve_state(s1, tuned) == tuned
    # The user edits the batch size: it restarts from there; the loop's other knobs stay.
    s2 = spec(replicas=2, batching={"maxBatchSize": 16, "maxWaitMs": 5}, autoscaling=auto)
    assert resolve_state(s2, tuned) == TunedState(6, 16, 12.0, 0)
    # kubectl scale bm --replicas=3 writes spec.replicas: the new starting point.
    s3 = spec(replicas=3, batching={"maxBatchSize": 32, "maxWaitMs": 5}, autoscaling=auto)
    assert resolve_state(s3, tuned).replicas == 3
    # A state persisted without a basis keeps the loop's values.
    assert resolve_state(s2, replace(tuned, basis=None)) == tuned
