"""Bounds on every runtime pod: default CPU and memory when the spec sets none, and a
``sizeLimit`` on every emptyDir, both from the operator's settings."""

from __future__ import annotations

from typing import Any

import pytest

from batchpilot_operator import desired
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.settings import OperatorSettings

BASIC = {"model": {"uri": "hf://org/model", "task": "embedding"}}


def make(**spec: Any) -> BatchedModel:
    return BatchedModel.from_body(
        {"metadata": {"name": "m", "namespace": "ns"}, "spec": {**BASIC, **spec}}
    )


def deployment(bm: BatchedModel, settings: OperatorSettings | None = None) -> dict[str, Any]:
    state = TunedState(1, 8, 5.0, 1)
    if settings is None:
        return desired.desired_deployment(bm, state)
    return desired.desired_deployment(bm, state, settings)


def resources(bm: BatchedModel, settings: OperatorSettings | None = None) -> dict[str, Any]:
    (container,) = deployment(bm, settings)["spec"]["template"]["spec"]["containers"]
    return dict(container.get("resources", {}))


def test_a_spec_without_resources_gets_the_default_requests_and_memory_limit() -> None:
    assert resources(make()) == {
        "requests": {"cpu": "1", "memory": "2Gi"},
        "limits": {"memory": "8Gi"},
    }


def test_the_spec_wins_field_by_field_and_gpus_come_from_the_spec() -> None:
    assert resources(make(resources={"cpu": "250m"})) == {
        "requests": {"cpu": "250m", "memory": "2Gi"},
        "limits": {"memory": "8Gi"},
    }
    # The spec's memory is both request and limit; the default limit does not apply.
    assert resources(make(resources={"memory": "20Gi", "gpus": 1})) == {
        "requests": {"cpu": "1", "memory": "20Gi", "nvidia.com/gpu": "1"},
        "limits": {"memory": "20Gi", "nvidia.com/gpu": "1"},
    }


def test_the_defaults_come_from_the_settings_and_can_be_turned_off() -> None:
    custom = OperatorSettings(
        default_cpu_request="2", default_memory_request="4Gi", default_memory_limit="32Gi"
    )
    assert resources(make(), custom) == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"memory": "32Gi"},
    }
    none = OperatorSettings(
        default_cpu_request="", default_memory_request="", default_memory_limit=""
    )
    assert resources(make(), none) == {}


def test_every_empty_dir_has_a_size_limit() -> None:
    for spec in ({}, {"model": {"uri": "pvc://models/bert", "task": "embedding"}}):
        volumes = deployment(make(**spec))["spec"]["template"]["spec"]["volumes"]
        empty = {v["name"]: v["emptyDir"] for v in volumes if "emptyDir" in v}
        assert empty == {"tmp": {"sizeLimit": "1Gi"}, "cache": {"sizeLimit": "2Gi"}}
    custom = OperatorSettings(tmp_size_limit="256Mi", cache_size_limit="40Gi")
    volumes = deployment(make(), custom)["spec"]["template"]["spec"]["volumes"]
    assert {v["name"]: v.get("emptyDir") for v in volumes if "emptyDir" in v} == {
        "tmp": {"sizeLimit": "256Mi"},
        "cache": {"sizeLimit": "40Gi"},
    }


def test_limits_from_env_and_bad_quantities_refused() -> None:
    s = OperatorSettings.from_env(
        {
            "BATCHPILOT_DEFAULT_MEMORY_LIMIT": "16Gi",
            "BATCHPILOT_CACHE_SIZE_LIMIT": "10Gi",
            "BATCHPILOT_DEFAULT_CPU_REQUEST": "",
        }
    )
    assert (s.default_memory_limit, s.cache_size_limit, s.default_cpu_request) == (
        "16Gi",
        "10Gi",
        "",
    )
    assert (s.default_memory_request, s.tmp_size_limit) == ("2Gi", "1Gi")
    with pytest.raises(ValueError, match="BATCHPILOT_TMP_SIZE_LIMIT"):
        OperatorSettings.from_env({"BATCHPILOT_TMP_SIZE_LIMIT": "lots"})
    with pytest.raises(ValueError, match="must not exceed"):
        OperatorSettings(default_memory_request="16Gi", default_memory_limit="8Gi")
