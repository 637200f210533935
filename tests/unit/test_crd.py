"""The generated CRD: up to date, structural, and carrying the API's rules and columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchpilot_operator import crdgen
from batchpilot_operator.api import BatchedModel

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "const", "title", "examples", "nullable"}


@pytest.mark.parametrize("rel", crdgen.CRD_PATHS, ids=str)
def test_crd_files_are_up_to_date(rel: Path) -> None:
    path = ROOT / rel
    assert path.exists(), f"{rel} is missing: run `make crds`"
    assert path.read_text() == crdgen.render(), f"{rel} is stale: run `make crds`"


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0


def nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from nodes(child, f"{path}.{key}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from nodes(node["additionalProperties"], f"{path}.*")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


def version() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "crds" / "batchedmodels.yaml").read_text())
    assert doc["spec"]["names"]["shortNames"] == ["bm"]
    assert doc["spec"]["scope"] == "Namespaced"
    (v,) = doc["spec"]["versions"]
    return dict(v)


def test_schema_is_structural_and_documented() -> None:
    schema = version()["schema"]["openAPIV3Schema"]
    for path, node in nodes(schema):
        assert "type" in node, f"{path} has no type"
        assert not FORBIDDEN & node.keys(), f"{path} uses {FORBIDDEN & node.keys()}"
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True
        if path.count(".") >= 2 and not path.endswith((".*", "[]")):
            assert node.get("description"), f"{path} has no description"
        if "properties" in node:
            assert "additionalProperties" not in node, path


def test_validation_rules_and_bounds() -> None:
    schema = version()["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    rules = {r["rule"] for r in spec["autoscaling"]["x-kubernetes-validations"]}
    assert rules == {
        "self.minReplicas <= self.maxReplicas",
        "self.minBatchSize <= self.maxBatchSize",
        "self.minWaitMs <= self.maxWaitMs",
    }
    assert spec["model"]["properties"]["task"]["enum"] == [
        "embedding",
        "classification",
        "rerank",
        "image-classification",
        "multimodal-embedding",
    ]
    assert spec["model"]["required"] == ["uri", "task"]
    assert schema["properties"]["spec"]["required"] == ["model"]
    assert spec["batching"]["properties"]["maxBatchSize"]["minimum"] == 1
    assert spec["batching"]["properties"]["maxBatchSize"]["maximum"] == 4096
    assert spec["replicas"]["minimum"] == 0
    assert spec["resources"]["default"] == {"gpus": 0}
    assert spec["batching"]["default"] == {
        "maxBatchSize": 32,
        "maxWaitMs": 5.0,
        "maxQueue": 1024,
        "requestTimeoutMs": 30000.0,
    }
    assert spec["autoscaling"]["default"]["enabled"] is False
    assert "metadata.name" in schema["x-kubernetes-validations"][0]["message"]
    env_rules = spec["env"]["items"]["x-kubernetes-validations"]
    reserved = next(r for r in env_rules if r.get("fieldPath") == ".name")
    assert "startsWith('BATCHPILOT_')" in reserved["rule"]
    assert "'BATCHPILOT_THREADS'" in reserved["rule"]
    assert "BATCHPILOT_THREADS" in reserved["message"]
    assert "HF_MODULES_CACHE" in reserved["message"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_subresources_and_printer_columns() -> None:
    v = version()
    assert v["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    default = [c["name"].upper() for c in v["additionalPrinterColumns"] if not c.get("priority")]
    assert default == ["READY", "BATCH", "WAIT-MS", "QUEUE", "RPS", "P95-MS", "STATUS", "AGE"]
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    for column in v["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0].strip(".").split(".")
        if path[0] == "status":
            assert path[1] in status, column


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_examples_parse(name: str) -> None:
    for body in yaml.safe_load_all((ROOT / "examples" / name).read_text()):
        assert body["apiVersion"] == "batchpilot.dev/v1alpha1"
        assert BatchedModel.from_body(body).name == body["metadata"]["name"]
