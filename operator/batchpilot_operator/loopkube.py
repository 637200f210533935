"""The tuning loop's access to the cluster: :class:`batchpilot_operator.loop.Kube` on the
kubernetes client. Synchronous: the loop calls it in a thread."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from batchpilot_contract.labels import CONFIG_GENERATION_ANNOTATION, selector_string
from batchpilot_operator import reconcile
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.kube import (
    LOGGER,
    NETWORK_ERRORS,
    Clients,
    Log,
    as_json,
    classify,
    clients,
    patch_status,
    read_live_model,
)


class KubeForLoop:
    """The tuning loop's access to the cluster (:class:`batchpilot_operator.loop.Kube`)."""

    def __init__(self, logger: Log = LOGGER, api_clients: Clients | None = None) -> None:
        self.logger = logger
        self._clients = api_clients

    @property
    def c(self) -> Clients:
        """The clients given, or the process-wide ones."""
        return self._clients or clients()

    def read(self, namespace: str, name: str) -> BatchedModel | None:
        """The BatchedModel (with its ``resourceVersion``), or None once it is gone."""
        body = read_live_model(self.c, namespace, name)
        return BatchedModel.from_body(body) if body is not None else None

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The BatchedModel's runtime pods, as the API returns them."""
        try:
            listing = self.c.core.list_namespaced_pod(
                namespace, label_selector=selector_string(name), _preload_content=False
            )
        except NETWORK_ERRORS as exc:
            raise classify(exc) from exc
        items: list[dict[str, Any]] = as_json(listing).get("items", [])
        return items

    def patch_status(
        self, namespace: str, name: str, fields: Mapping[str, Any], resource_version: str | None
    ) -> bool:
        """The loop's status write, conditional on ``resource_version``; False on a conflict
        (the object changed since) or when the object is gone."""
        try:
            patch_status(self.c, namespace, name, fields, resource_version)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise classify(exc) from exc
        except NETWORK_ERRORS as exc:
            raise classify(exc) from exc
        return True

    def reconcile(self, namespace: str, name: str) -> TunedState | None:
        """Converge the children and status; the state rendered (None: gone)."""
        result = reconcile.converge(namespace, name, logger=self.logger, api_clients=self._clients)
        return result.state if result is not None else None

    def touch_pods(self, namespace: str, pods: list[str], generation: int) -> None:
        """Annotate the pods with the config generation (a pod already gone is fine)."""
        patch = {"metadata": {"annotations": {CONFIG_GENERATION_ANNOTATION: str(generation)}}}
        for pod in pods:
            try:
                self.c.core.patch_namespaced_pod(pod, namespace, patch, _preload_content=False)
            except ApiException as exc:
                if exc.status != 404:  # a pod deleted meanwhile needs no refresh
                    self.logger.warning(f"could not touch pod {pod}: {exc.status} {exc.reason}")
