"""The generated reference pages: up to date, and complete against the code they document."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpilot_contract import metrics
from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator import api, crdgen, docgen
from batchpilot_operator.__main__ import build_parser
from batchpilot_operator.settings import OperatorSettings
from batchpilot_runtime import settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("rel", docgen.PAGES, ids=str)
def test_reference_pages_are_up_to_date(rel: Path) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} is missing: run `make docs`"
    assert path.read_text() == docgen.PAGES[rel](), f"{rel} is stale: run `make docs`"


def test_check_mode_reports_stale_pages(tmp_path: Path) -> None:
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert docgen.main(["--root", str(tmp_path)]) == 0
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 0
    page = tmp_path / docgen.REFERENCE / "metrics.md"
    page.write_text(page.read_text() + "edited by hand\n")
    assert docgen.main(["--root", str(tmp_path), "--check"]) == 1


def table_keys(page: str) -> list[str]:
    """The first cell of every table row, without its backticks."""
    return [m.group(1) for m in re.finditer(r"^\| `([^`]+)` \|", page, re.MULTILINE)]


def aliases(model: type[api._Base], prefix: str) -> Iterator[str]:
    for name, info in model.model_fields.items():
        yield prefix + (info.alias or name)


def test_crd_page_lists_every_field_with_its_default_and_rules() -> None:
    page = docgen.crd_page(crdgen.crd())
    keys = table_keys(page)
    for model, prefix in (
        (api.BatchedModelSpec, ""),
        (api.Autoscaling, "autoscaling."),
        (api.Batching, "batching."),
        (api.EnvVar, "env[]."),
        (api.BatchedModelStatus, ""),
        (api.LoopStatus, "loop."),
    ):
        for key in aliases(model, prefix):
            assert key in keys, key
    row = next(line for line in page.splitlines() if line.startswith("| `replicas` | integer"))
    assert "| `1` | 0..1000 |" in row
    assert "`self.minWaitMs <= self.maxWaitMs`" in page
    assert "| `spec.env[].valueFrom` |" in page


def test_metrics_page_lists_every_metric_and_bucket_set() -> None:
    page = docgen.PAGES[docgen.REFERENCE / "metrics.md"]()
    names = [
        v
        for k, v in vars(metrics).items()
        if k.isupper() and k != "PREFIX" and str(v).startswith(metrics.PREFIX)
    ]
    assert {metrics.QUEUE_DEPTH, metrics.DEVICE_INFO} <= set(names)
    for name in names:
        assert f"| `{name}` |" in page, name
    assert ", ".join(f"`{o}`" for o in metrics.OUTCOMES) in page
    assert ", ".join(f"{b:g}" for b in metrics.LATENCY_BUCKETS) + ", +Inf" in page
    assert ", ".join(f"{b:g}" for b in metrics.BATCH_SIZE_BUCKETS) + ", +Inf" in page


def test_flag_pages_list_every_setting_with_its_variable_and_default() -> None:
    runtime = docgen.PAGES[docgen.REFERENCE / "runtime.md"]()
    for f in dataclasses.fields(settings.Settings):
        flag = "--" + f.name.replace("_", "-")
        assert f"| `{flag}`" in runtime, flag
        assert f"`BATCHPILOT_{f.name.upper()}`" in runtime, f.name
    assert "| `--model` | `BATCHPILOT_MODEL` | required |" in runtime
    assert "| `BATCHPILOT_THREADS` | one per core | torch intra-op threads |" in runtime
    assert "| `--normalize` / `--no-normalize` | `BATCHPILOT_NORMALIZE` | `true` |" in runtime
    operator = docgen.operator_page(build_parser({}), OperatorSettings, "BATCHPILOT_")
    assert "| `-n` / `--namespace` |" in operator
    for f in dataclasses.fields(OperatorSettings):
        assert f"| `BATCHPILOT_{f.name.upper()}` | " in operator, f.name
    assert "| `BATCHPILOT_RESYNC_SECONDS` | `60.0` | Period of the level-triggered" in operator


def test_values_page_takes_helm_docs_comments_and_nested_keys() -> None:
    text = (
        "# a file comment, not a value's\n"
        "# -- The image.\n"
        "image:\n"
        "  # -- Its tag,\n"
        "  # over two lines.\n"
        "  tag: ''\n"
        "  undocumented: 1\n"
        "# -- Extra labels.\n"
        "labels: {a: b}\n"
        "other: true\n"
    )
    page = docgen.values_page(text)
    assert table_keys(page) == ["image", "image.tag", "labels"]
    assert '| `image.tag` | string | `""` | Its tag, over two lines. |' in page
    assert '| `labels` | object | `{"a":"b"}` | Extra labels. |' in page


def test_config_page_lists_every_key_of_the_contract() -> None:
    page = docgen.PAGES[docgen.REFERENCE / "batching-json.md"]()
    keys = table_keys(page)
    assert keys == [info.alias or name for name, info in BatchingConfig.model_fields.items()]
    assert "| `maxBatchSize` | integer | `32` | 1..4096 |" in page
