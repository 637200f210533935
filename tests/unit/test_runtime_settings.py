"""Settings precedence (defaults, env, flags), model URIs, and the config file watcher."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime.reload import ConfigWatcher
from batchpilot_runtime.settings import DEFAULT_CONFIG_PATH, parse_settings, resolve_model_path


def test_defaults() -> None:
    s = parse_settings(["--model", "/m/minilm"], env={})
    assert (s.host, s.port, s.task, s.config) == ("0.0.0.0", 8080, "embedding", DEFAULT_CONFIG_PATH)
    assert s.served_name == "minilm"
    assert s.base_config() == BatchingConfig()


def test_environment_then_flags() -> None:
    env = {
        "BATCHPILOT_MODEL": "hf://org/tiny-bert@v2",
        "BATCHPILOT_HOST": "127.0.0.7",
        "BATCHPILOT_PORT": "9000",
        "BATCHPILOT_TASK": "classification",
        "BATCHPILOT_NORMALIZE": "false",
        "BATCHPILOT_MAX_BATCH_SIZE": "8",
    }
    s = parse_settings([], env=env)
    assert (s.model, s.host, s.port, s.task) == (
        "hf://org/tiny-bert@v2",
        "127.0.0.7",
        9000,
        "classification",
    )
    assert s.served_name == "tiny-bert"
    assert s.normalize is False
    assert s.base_config().max_batch_size == 8
    s = parse_settings(["--port", "9100", "--normalize", "--name", "bert"], env=env)
    assert (s.host, s.port, s.normalize, s.served_name) == ("127.0.0.7", 9100, True, "bert")


def test_bad_values_are_refused_naming_the_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--model", "/m"], env={"BATCHPILOT_PORT": "http"})
    assert "BATCHPILOT_PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(["--model", "/m", "--task", "dance"], env={})
    assert "--task" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value"), [("--body-timeout", "0.0"), ("--graceful-timeout", "-1")]
)
def test_shutdown_bounds_out_of_range_are_refused_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--model", "/m", flag, value], env={})
    assert f"{flag}: {value}" in capsys.readouterr().err


def test_model_uris(tmp_path: Path) -> None:
    (tmp_path / "claim" / "bert").mkdir(parents=True)
    assert resolve_model_path(str(tmp_path)) == tmp_path
    assert resolve_model_path(f"file://{tmp_path}") == tmp_path
    env = {"BATCHPILOT_PVC_ROOT": str(tmp_path)}
    assert resolve_model_path("pvc://claim/bert", env) == tmp_path / "claim" / "bert"
    with pytest.raises(FileNotFoundError, match="no model directory"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unsupported scheme"):
        resolve_model_path("s3://bucket/model")


def test_hf_uris_read_the_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        resolve_model_path("hf://nobody/nothing@main")


def test_watcher_applies_valid_files_and_keeps_the_last_good(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "batching.json"
    seen: list[BatchingConfig] = []
    watcher = ConfigWatcher(path, BatchingConfig(), on_change=seen.append)
    with caplog.at_level(logging.INFO):
        assert not watcher.check()  # missing: defaults stay
    assert "no batching config" in caplog.text
    path.write_text(BatchingConfig(max_batch_size=4, generation=1).to_json())
    assert watcher.check()
    assert not watcher.check()  # unchanged
    path.write_text('{"maxBatchSize": "lots"}')
    assert not watcher.check()
    assert watcher.config.max_batch_size == 4
    assert watcher.error is not None
    assert "maxBatchSize" in watcher.error
    path.unlink()
    assert not watcher.check()
    path.write_text('{"maxBatchSize": 9, "generation": 2}')
    assert watcher.check()
    assert [c.max_batch_size for c in seen] == [4, 9]
    assert watcher.error is None


def test_a_deleted_config_file_clears_the_error_and_keeps_the_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "batching.json"
    watcher = ConfigWatcher(path, BatchingConfig())
    path.write_text('{"maxBatchSize": 6}')
    assert watcher.check()
    path.write_text('{"maxBatchSize": -1}')
    assert not watcher.check()
    assert watcher.error is not None
    path.unlink()
    with caplog.at_level(logging.INFO):
        assert not watcher.check()
        assert not watcher.check()
    # Missing is not an error: the config in force stays, and it is said once.
    assert watcher.error is None
    assert watcher.config.max_batch_size == 6
    assert caplog.text.count("no batching config") == 1
    # The same invalid document written again is reported again.
    path.write_text('{"maxBatchSize": -1}')
    assert not watcher.check()
    assert watcher.error is not None
    assert "maxBatchSize" in watcher.error


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://claim/../../outside",
        "pvc://claim/../../../../../../../../../../../../etc",
        "pvc://claim/bert/../../other",
        "pvc://../outside",
        "pvc://",
    ],
)
def test_a_pvc_uri_never_leads_out_of_its_claim(tmp_path: Path, uri: str) -> None:
    root = tmp_path / "pvc"
    (root / "claim" / "bert").mkdir(parents=True)
    (root / "other").mkdir()
    (tmp_path / "outside").mkdir()
    with pytest.raises(ValueError, match=re.escape(uri)):
        resolve_model_path(uri, {"BATCHPILOT_PVC_ROOT": str(root)})


def test_a_pvc_symlink_out_of_the_claim_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "pvc"
    (root / "claim").mkdir(parents=True)
    (root / "claim" / "escape").symlink_to(tmp_path)
    env = {"BATCHPILOT_PVC_ROOT": str(root)}
    with pytest.raises(ValueError, match="out of claim"):
        resolve_model_path("pvc://claim/escape", env)
    # Inside the claim, . and .. that stay within it are fine.
    (root / "claim" / "bert").mkdir()
    assert resolve_model_path("pvc://claim/bert/./x/..", env) == root / "claim" / "bert"
