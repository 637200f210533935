"""The ConfigMap contract: parsing, defaults, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchpilot_runtime.config import BatchingConfig, ConfigError


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


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        BatchingConfig.from_file(tmp_path / "missing.json")
