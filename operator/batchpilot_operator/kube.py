"""API access for the reconciler and the tuning loop: one shared client pool, reads as plain
dicts, conditional status writes, Events, and the classification of failures into what a
retry may fix (:class:`TransientError`) and what it will not (:class:`PermanentError`).
Also :func:`drift`, the comparison of a wanted child with the live one."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
import kubernetes
import urllib3
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from batchpilot_operator import api

LOGGER = logging.getLogger("batchpilot.operator")
Log = logging.Logger | logging.LoggerAdapter[Any]


class TransientError(Exception):
    """An API failure worth retrying (server errors, throttling, timeouts, conflicts)."""


class PermanentError(Exception):
    """An API failure that retrying the same request will not fix (invalid object)."""


class Clients:
    """The kubernetes API groups the reconciler uses, on one shared connection pool."""

    def __init__(self, client: ApiClient | None = None) -> None:
        self.client = client or ApiClient()
        self.core = CoreV1Api(self.client)
        self.apps = AppsV1Api(self.client)
        self.custom = CustomObjectsApi(self.client)


_clients: Clients | None = None
_clients_lock = threading.Lock()


def clients() -> Clients:
    """The process-wide clients, configured from the kubeconfig or the pod's service account."""
    global _clients
    with _clients_lock:
        if _clients is None:
            kubernetes.config.load_config()  # type: ignore[no-untyped-call]
            _clients = Clients(ApiClient(pooled_configuration()))
        return _clients


API_CONNECTIONS = 64
"""Connections kept open to the API server. Handlers and tuning loops call it from many
worker threads at once; with the client's default pool (five per core) connections are
discarded under load and each new one pays a TLS handshake."""


def pooled_configuration() -> kubernetes.client.Configuration:
    """The loaded client configuration, with a connection pool of ``API_CONNECTIONS``."""
    configuration = kubernetes.client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = API_CONNECTIONS
    return configuration


def classify(exc: Exception) -> Exception:
    """Map a client exception to :class:`TransientError` or :class:`PermanentError`."""
    if isinstance(exc, ApiException):
        detail = f"{exc.status} {exc.reason}: {api_message(exc)}"
        if exc.status in (400, 403, 422):
            return PermanentError(detail)
        return TransientError(detail)  # 404 of a child mid-delete, 409, 429, 5xx, ...
    return TransientError(f"{type(exc).__name__}: {exc}")


def api_message(exc: ApiException) -> str:
    """The message of the API's Status body, or the body as it is."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except ValueError:
        return str(exc.body)


NETWORK_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)
"""What a call to the API server may raise."""


def read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """GET an object as a plain dict; None if it does not exist."""
    try:
        response = fn(*args, _preload_content=False, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return as_json(response)


def as_json(response: Any) -> dict[str, Any]:
    """The body of a raw (``_preload_content=False``) response as a plain dict, with the
    API's own field names: faster than the client's models, and nothing dropped."""
    data: dict[str, Any] = json.loads(response.data)
    return data


# ------------------------------------------------------------------------------ comparison


def drift(want: Any, have: Any, path: str = "") -> list[str]:
    """Paths where ``have`` does not carry ``want`` (fields only ``have`` has are fine:
    the API server adds defaults, and others may own fields the operator does not set)."""
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return [path or "."]
        out: list[str] = []
        for key, value in want.items():
            out += drift(value, have.get(key), f"{path}.{key}")
        return out
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return [path or "."]
        out = []
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            out += drift(w, h, f"{path}[{i}]")
        return out
    if want == have or (str(want) == str(have) and not isinstance(want, bool)):
        return []
    return [path or "."]


def read_live_model(c: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The BatchedModel's body; None once it is gone or being deleted."""
    try:
        body = read(
            c.custom.get_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
        )
    except NETWORK_ERRORS as exc:
        raise classify(exc) from exc
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    return body


def patch_status(
    c: Clients,
    namespace: str,
    name: str,
    patch: Mapping[str, Any],
    resource_version: str | None = None,
) -> None:
    """Merge ``patch`` into the BatchedModel's status. With ``resource_version`` the write is
    conditional: the API server refuses it (409 Conflict) if the object changed since."""
    body: dict[str, Any] = {"status": dict(patch)}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    c.custom.patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        namespace,
        api.PLURAL,
        name,
        body,
        _content_type="application/merge-patch+json",
    )


def event(
    body: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    logger: Log = LOGGER,
) -> None:
    """Log an Event and post it on the object (outside a running operator: only the log)."""
    meta = body.get("metadata", {})
    LOGGER.info(f"{meta.get('namespace')}/{meta.get('name')}: {reason}: {message}")
    with contextlib.suppress(LookupError):  # outside a running operator: the log is the record
        kopf.event(kopf_body(body), type=type_, reason=reason, message=message[:1024])


def kopf_body(body: Mapping[str, Any]) -> kopf.Body:
    """A plain body as kopf's type (for owner references and Events)."""
    return kopf.Body(cast(kopf.RawBody, dict(body)))
