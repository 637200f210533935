"""Labels and annotations of the runtime pods and the children the operator owns.

The selector labels are immutable on a Deployment, so they never change; the annotations tell
the pods' spec hash (a new value is a new rollout), the batching config generation written,
and where a Prometheus of one's own scrapes.
"""

from __future__ import annotations

from typing import Final

from batchpilot_contract.pod import METRICS_PATH, PORT

DOMAIN: Final = "batchpilot.dev"
"""The project's domain: the API group and the prefix of its annotations."""

NAME_LABEL: Final = "app.kubernetes.io/name"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
PART_OF_LABEL: Final = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"

APP_NAME: Final = "batchpilot-runtime"
"""``app.kubernetes.io/name`` of the runtime pods."""
COMPONENT: Final = "model-server"
PART_OF: Final = "batchpilot"
MANAGED_BY: Final = "batchpilot-operator"
"""``app.kubernetes.io/managed-by`` of every child the operator owns."""

SPEC_HASH_ANNOTATION: Final = f"{DOMAIN}/spec-hash"
"""On the pod template: the hash of the spec fields that shape it."""
CONFIG_GENERATION_ANNOTATION: Final = f"{DOMAIN}/config-generation"
"""On the ConfigMap and the pods: the batching config generation written."""

SCRAPE_ANNOTATION: Final = "prometheus.io/scrape"
SCRAPE_PORT_ANNOTATION: Final = "prometheus.io/port"
SCRAPE_PATH_ANNOTATION: Final = "prometheus.io/path"


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the runtime pods of BatchedModel ``name`` (immutable)."""
    return {NAME_LABEL: APP_NAME, INSTANCE_LABEL: name}


def selector_string(name: str) -> str:
    """:func:`selector_labels` as a label selector string (``status.selector``)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(name).items()))


def instance_selector(name: str) -> str:
    """A selector of every pod of BatchedModel ``name``, by its instance label alone."""
    return f"{INSTANCE_LABEL}={name}"


def labels(name: str) -> dict[str, str]:
    """Labels of every child and of the runtime pods of BatchedModel ``name``."""
    return {
        **selector_labels(name),
        COMPONENT_LABEL: COMPONENT,
        PART_OF_LABEL: PART_OF,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def owned_selector() -> dict[str, str]:
    """The label every child the operator owns carries."""
    return {MANAGED_BY_LABEL: MANAGED_BY}


def scrape_annotations() -> dict[str, str]:
    """Where a Prometheus of one's own scrapes the runtime pods (and the Service)."""
    return {
        SCRAPE_ANNOTATION: "true",
        SCRAPE_PORT_ANNOTATION: str(PORT),
        SCRAPE_PATH_ANNOTATION: METRICS_PATH,
    }
