"""The metrics and pod contracts: what a metric spec may be, that the runtime's registry
exports exactly the specs, and the labels and paths the operator's pods are given."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchpilot_contract import labels, lifecycle, metrics, pod
from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.metrics import Kind, Metric
from batchpilot_runtime.telemetry import Telemetry


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"name": "queue_depth", "kind": Kind.GAUGE}, "starts with"),
        ({"name": "batchpilot_requests", "kind": Kind.COUNTER}, "_total"),
        ({"name": "batchpilot_things_total", "kind": Kind.GAUGE}, "_total"),
        ({"name": "batchpilot_wait_seconds", "kind": Kind.HISTOGRAM}, "buckets"),
        ({"name": "batchpilot_depth", "kind": Kind.GAUGE, "buckets": (1.0,)}, "buckets"),
        (
            {"name": "batchpilot_wait_seconds", "kind": Kind.HISTOGRAM, "buckets": (2.0, 1.0)},
            "increasing",
        ),
    ],
)
def test_metric_specs_are_checked(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Metric(help="h", **kwargs)


def test_the_runtime_registry_exports_exactly_the_contract() -> None:
    telemetry = Telemetry(queue_depth=lambda: 0.0, config=BatchingConfig)
    telemetry.device_loaded("cpu", emulated=False)
    families = {f.name: f for f in text_string_to_metric_families(telemetry.render().decode())}
    exported = {}
    for spec in metrics.METRICS:
        family = families[spec.name.removesuffix("_total")]
        exported[spec.name] = family
        assert (family.type, family.documentation) == (spec.kind.value, spec.help), spec.name
        label_names = {k for s in family.samples for k in s.labels if k != "le"}
        assert label_names == set(spec.labels), spec.name
        if spec.kind is Kind.HISTOGRAM:
            bounds = [s.labels["le"] for s in family.samples if s.name.endswith("_bucket")]
            assert bounds == [*(str(float(b)) for b in spec.buckets), "+Inf"], spec.name
    assert set(families) == set(f.name for f in exported.values()), "nothing beyond the specs"
    outcomes = [s.labels[metrics.OUTCOME_LABEL] for s in exported[metrics.REQUESTS_TOTAL].samples]
    assert outcomes == list(metrics.OUTCOMES), "every outcome exported from the start"


def test_the_pod_labels_select_by_name_and_instance_and_carry_the_owner() -> None:
    selector = labels.selector_labels("emb")
    assert labels.labels("emb").items() >= selector.items()
    assert labels.labels("emb").items() >= labels.owned_selector().items()
    assert labels.selector_string("emb") == ",".join(
        f"{k}={v}" for k, v in sorted(selector.items())
    )
    assert labels.instance_selector("emb") in labels.selector_string("emb").split(",")
    assert labels.labels("a") != labels.labels("b")


def test_the_scrape_annotations_point_at_the_runtimes_port_and_path() -> None:
    assert labels.scrape_annotations() == {
        labels.SCRAPE_ANNOTATION: "true",
        labels.SCRAPE_PORT_ANNOTATION: str(pod.PORT),
        labels.SCRAPE_PATH_ANNOTATION: pod.METRICS_PATH,
    }
    assert labels.SPEC_HASH_ANNOTATION.startswith(labels.DOMAIN + "/")


def test_variables_follow_the_runtimes_naming_rule() -> None:
    assert pod.env_name("max_inputs") == "BATCHPILOT_MAX_INPUTS"
    assert all(name.startswith(pod.ENV_PREFIX) for name in pod.TUNING_ENV)
    assert pod.CONFIG_PATH.startswith(pod.CONFIG_DIR + "/")


def test_the_grace_period_covers_the_drain_and_the_graceful_bound() -> None:
    grace = lifecycle.termination_grace_seconds()
    assert isinstance(grace, int)
    assert grace >= lifecycle.DRAIN_DELAY_SECONDS + lifecycle.GRACEFUL_TIMEOUT_SECONDS
    assert lifecycle.termination_grace_seconds(0.5, 1) == 12
