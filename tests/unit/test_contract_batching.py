"""The ConfigMap contract: parsing, defaults, errors that name the field, and the bounds the
operator's API shares with it."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from batchpilot_contract import batching
from batchpilot_contract.batching import BatchingConfig, ConfigError, Knob
from batchpilot_operator import api


def test_round_trip_uses_camel_case_keys() -> None:
    cfg = BatchingConfig(max_batch_size=16, max_wait_ms=2.5, generation=7)
    text = cfg.to_json()
    assert '"maxBatchSize": 16' in text
    assert '"maxWaitMs": 2.5' in text
    assert BatchingConfig.from_json(text) == cfg


def test_defaults_fill_missing_keys() -> None:
    cfg = BatchingConfig.from_json('{"maxBatchSize": 8}')
    assert cfg.max_batch_size == 8
    assert cfg.max_wait_ms == BatchingConfig().max_wait_ms
    assert cfg.max_wait_s == pytest.approx(cfg.max_wait_ms / 1000)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ('{"maxBatchSize": 0}', "maxBatchSize"),
        ('{"maxBatchSize": "many"}', "maxBatchSize"),
        ('{"maxWaitMs": -1}', "maxWaitMs"),
        ('{"maxQueue": 0}', "maxQueue"),
        ('{"requestTimeoutMs": 0}', "requestTimeoutMs"),
        ('{"maxBatchSize": 8, "surprise": 1}', "surprise"),
        # A bool or a string does not pass for a number.
        ('{"maxBatchSize": true}', "maxBatchSize"),
        ('{"maxBatchSize": "8"}', "maxBatchSize"),
        ('{"maxWaitMs": true}', "maxWaitMs"),
        ('{"maxWaitMs": "5"}', "maxWaitMs"),
        ('{"maxQueue": true}', "maxQueue"),
        ('{"requestTimeoutMs": "100"}', "requestTimeoutMs"),
        ('{"generation": "3"}', "generation"),
        ("{not json", "document"),
    ],
)
def test_invalid_documents_name_the_field(document: str, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        BatchingConfig.from_json(document)


def test_a_number_field_takes_an_integer() -> None:
    cfg = BatchingConfig.from_json('{"maxWaitMs": 5, "requestTimeoutMs": 100}')
    assert (cfg.max_wait_ms, cfg.request_timeout_ms) == (5.0, 100.0)
    assert BatchingConfig(maxWaitMs=2, maxBatchSize=4).max_wait_ms == 2.0


def test_a_knob_refuses_a_default_outside_its_bounds() -> None:
    with pytest.raises(ValueError, match="outside"):
        Knob(default=0, minimum=1, maximum=8, description="x")
    with pytest.raises(ValueError, match="outside"):
        Knob(default=0.0, minimum=0.0, maximum=1.0, description="x", exclusive_minimum=True)
    assert Knob(default=1, minimum=1, maximum=8, description="x").bounds() == {"ge": 1, "le": 8}


@pytest.mark.parametrize(
    ("knob", "key"),
    [
        (batching.MAX_BATCH_SIZE, "maxBatchSize"),
        (batching.MAX_WAIT_MS, "maxWaitMs"),
        (batching.MAX_QUEUE, "maxQueue"),
        (batching.REQUEST_TIMEOUT_MS, "requestTimeoutMs"),
    ],
)
def test_each_knob_bounds_the_document_exactly(knob: Knob, key: str) -> None:
    assert BatchingConfig.model_validate({}).model_dump(by_alias=True)[key] == knob.default
    BatchingConfig.model_validate({key: knob.maximum})
    with pytest.raises(ConfigError, match=key):
        BatchingConfig.from_json(f'{{"{key}": {knob.maximum * 2}}}')
    below = knob.minimum if knob.exclusive_minimum else knob.minimum - 1
    assert not knob.contains(below)
    with pytest.raises(ConfigError, match=key):
        BatchingConfig.from_json(f'{{"{key}": {below}}}')


def _bounds(model: type[BaseModel], name: str) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True)["properties"][name]
    keys = ("minimum", "exclusiveMinimum", "maximum", "default")
    return {k: schema[k] for k in keys if k in schema}


@pytest.mark.parametrize(
    ("model", "name", "config_key"),
    [
        (api.Batching, "maxBatchSize", "maxBatchSize"),
        (api.Batching, "maxWaitMs", "maxWaitMs"),
        (api.Batching, "maxQueue", "maxQueue"),
        (api.Batching, "requestTimeoutMs", "requestTimeoutMs"),
    ],
)
def test_the_api_batching_fields_are_the_documents(
    model: type[BaseModel], name: str, config_key: str
) -> None:
    assert _bounds(model, name) == _bounds(BatchingConfig, config_key)


@pytest.mark.parametrize(
    ("name", "config_key"),
    [
        ("minBatchSize", "maxBatchSize"),
        ("maxBatchSize", "maxBatchSize"),
        ("minWaitMs", "maxWaitMs"),
        ("maxWaitMs", "maxWaitMs"),
    ],
)
def test_the_autoscaling_ranges_stay_within_the_documents_bounds(
    name: str, config_key: str
) -> None:
    ranged, document = _bounds(api.Autoscaling, name), _bounds(BatchingConfig, config_key)
    assert (ranged["minimum"], ranged["maximum"]) == (document["minimum"], document["maximum"])
    top = {"maxBatchSize": batching.MAX_BATCH_SIZE, "maxWaitMs": batching.MAX_WAIT_MS}
    with pytest.raises(ValidationError, match=name):
        api.Autoscaling.model_validate({name: top[config_key].maximum + 1})
