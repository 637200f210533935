"""Thin kopf handlers around one level-triggered, idempotent reconcile: :func:`converge`.

Every path that may need action ends in :func:`converge` for the BatchedModel concerned:
its create/update/resume handlers, a periodic resync timer, and watches on the children
(Deployments, Services, ConfigMaps, pods) that map an event back to the owner. ``converge``
reads the BatchedModel afresh, resolves the tuned state (spec + ``status.tuned``), renders the
children with the pure builders of :mod:`batchpilot_operator.desired`, compares each with the
live object and applies it (server-side apply, forced) only where it drifted, then writes the
status fields it owns only if they changed.

Runs for one BatchedModel are serialised by a per-object lock, and a trigger that arrives
while another run is already waiting is folded into it. The tuning loop (a daemon,
:func:`tune`) plugs in through ``converge(..., adjust=...)``: a function of (BatchedModel,
TunedState) returning the new TunedState, applied under the same lock, so a decision and a
spec edit never race.

Handlers are synchronous (kopf runs them in its thread pool) because the kubernetes client
is. The one exception is the tuning loop: an async kopf daemon per BatchedModel with
autoscaling enabled (:func:`tune`), which runs :class:`batchpilot_operator.loop.TuningLoop`
once per ``intervalSeconds`` and reaches the API through :class:`KubeForLoop` in a thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf
import kubernetes
import urllib3
from kubernetes.client import ApiClient, AppsV1Api, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from batchpilot_contract.batching import BatchingConfig, configmap_name
from batchpilot_contract.labels import (
    CONFIG_GENERATION_ANNOTATION,
    DOMAIN,
    INSTANCE_LABEL,
    MANAGED_BY,
    owned_selector,
    selector_string,
)
from batchpilot_operator import api, conditions, desired
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.loop import Adjust, TuningLoop
from batchpilot_operator.settings import OperatorSettings

FIELD_MANAGER = MANAGED_BY
LOGGER = logging.getLogger("batchpilot.operator")
SETTINGS = OperatorSettings.from_env()
BM = (api.GROUP, api.VERSION, api.PLURAL)
Log = logging.Logger | logging.LoggerAdapter[Any]
OWNED = owned_selector()


class TransientError(Exception):
    """An API failure worth retrying (server errors, throttling, timeouts, conflicts)."""


class PermanentError(Exception):
    """An API failure that retrying the same request will not fix (invalid object)."""


@dataclass
class Reconciled:
    """What one :func:`converge` run did."""

    state: TunedState
    actions: list[str] = field(default_factory=list)
    status_patch: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- API access


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


def _classify(exc: Exception) -> Exception:
    """Map a client exception to :class:`TransientError` or :class:`PermanentError`."""
    if isinstance(exc, ApiException):
        detail = f"{exc.status} {exc.reason}: {_api_message(exc)}"
        if exc.status in (400, 403, 422):
            return PermanentError(detail)
        return TransientError(detail)  # 404 of a child mid-delete, 409, 429, 5xx, ...
    return TransientError(f"{type(exc).__name__}: {exc}")


def _api_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except ValueError:
        return str(exc.body)


_NETWORK_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def _read(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
    """GET an object as a plain dict; None if it does not exist."""
    try:
        response = fn(*args, _preload_content=False, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return _json(response)


def _json(response: Any) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------- reconcile


@dataclass
class _Slot:
    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: bool = False


_slots: dict[tuple[str, str], _Slot] = {}
_slots_lock = threading.Lock()
_completed = 0
"""Reconciles completed by this process (reported by the liveness endpoint)."""


def converge(
    namespace: str,
    name: str,
    *,
    logger: Log = LOGGER,
    adjust: Adjust | None = None,
    extra_status: Mapping[str, Any] | None = None,
    in_force: BatchingConfig | None = None,
    coalesce: bool = False,
    settings: OperatorSettings | None = None,
    api_clients: Clients | None = None,
) -> Reconciled | None:
    """Bring the children and status of one BatchedModel in line with its spec.

    For the tuning loop: ``adjust(bm, state)`` returns the state to apply (kept within the
    spec's bounds; its config generation is settled against the ConfigMap);
    ``extra_status`` adds status fields (the observation, ``lastDecision``); ``in_force`` is
    the batching config the pods report running, shown in ``status.maxBatchSize``,
    ``maxWaitMs`` and ``configGeneration``. Without ``in_force`` those show the config
    written, except with autoscaling enabled once set: then they belong to the loop.

    Returns None if the object is gone (or folded into a run already waiting, with
    ``coalesce``). Raises :class:`TransientError` or :class:`PermanentError` on API failures,
    after recording them in the Degraded condition when the API lets it.
    """
    key = (namespace, name)
    with _slots_lock:
        slot = _slots.setdefault(key, _Slot())
        if coalesce and slot.waiting:
            return None
        slot.waiting = True
    with slot.lock:
        with _slots_lock:
            slot.waiting = False
        return _converge_locked(
            namespace,
            name,
            logger=logger,
            adjust=adjust,
            extra_status=extra_status,
            in_force=in_force,
            settings=settings or SETTINGS,
            c=api_clients or clients(),
        )


def forget(namespace: str, name: str) -> None:
    """Drop the per-object bookkeeping of a deleted BatchedModel."""
    with _slots_lock:
        _slots.pop((namespace, name), None)


def _converge_locked(
    namespace: str,
    name: str,
    *,
    logger: Log,
    adjust: Adjust | None,
    extra_status: Mapping[str, Any] | None,
    in_force: BatchingConfig | None,
    settings: OperatorSettings,
    c: Clients,
) -> Reconciled | None:
    body = _read_live_model(c, namespace, name)
    if body is None:
        return None  # the garbage collector removes the children through owner references
    bm = BatchedModel.from_body(body)
    try:
        result = _apply(
            bm,
            body,
            logger=logger,
            adjust=adjust,
            extra=extra_status,
            in_force=in_force,
            s=settings,
            c=c,
        )
    except _NETWORK_ERRORS as exc:
        error = _classify(exc)
        _record_failure(bm, body, error, c, logger)
        raise error from exc
    global _completed
    with _slots_lock:
        _completed += 1
    return result


def _apply(
    bm: BatchedModel,
    body: dict[str, Any],
    *,
    logger: Log,
    adjust: Adjust | None,
    extra: Mapping[str, Any] | None,
    in_force: BatchingConfig | None,
    s: OperatorSettings,
    c: Clients,
) -> Reconciled:
    ns, name = bm.namespace, bm.name
    state = api.resolve_state(bm.spec, TunedState.from_status(bm.status))
    if adjust is not None:
        state = adjust(bm, state)
        if bm.spec.autoscaling.enabled:
            state = state.clamped(bm.spec)  # a decision never leaves the spec's bounds
    live_cm = _read(c.core.read_namespaced_config_map, configmap_name(name), ns)
    state = api.settle_generation(state, bm.spec, _written_config(live_cm))

    wanted = desired.desired_children(bm, state, s)
    kopf.adopt(wanted, owner=_kopf_body(body))
    result = Reconciled(state)
    deployment: dict[str, Any] | None = None
    for child in wanted:
        live = live_cm if child["kind"] == "ConfigMap" else _read_child(c, child)
        applied, action = _ensure(c, child, live)
        if action:
            result.actions.append(action)
            _event(body, "Normal", action.split()[0], action, logger)
        if child["kind"] == "Deployment":
            deployment = applied

    ready_and_done = _settled(deployment, state.replicas)
    pods: list[dict[str, Any]] = []
    if not ready_and_done:
        selector = selector_string(name)
        listing = c.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False)
        pods = _json(listing).get("items", [])
    observed = conditions.Observed(deployment, pods)
    now = conditions.now_rfc3339()
    wanted_status = conditions.build_status(bm, state, observed, now, in_force)
    if in_force is None and bm.spec.autoscaling.enabled and bm.status.config_generation is not None:
        # The loop reports what the pods run; do not overwrite it with what was merely written.
        for key in conditions.IN_FORCE_KEYS:
            wanted_status.pop(key, None)
    if not bm.spec.autoscaling.enabled:
        # The loop is off: its last observation and decision would only mislead.
        wanted_status.update(dict.fromkeys(conditions.LOOP_KEYS))
    if extra:
        wanted_status.update(extra)
    patch = conditions.status_patch(body.get("status"), wanted_status)
    if patch:
        _patch_status(c, bm, patch)
        _note_transitions(body, body.get("status") or {}, patch, logger)
    result.status_patch = patch
    return result


def _read_live_model(c: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """The BatchedModel's body; None once it is gone or being deleted."""
    try:
        body = _read(
            c.custom.get_namespaced_custom_object,
            api.GROUP,
            api.VERSION,
            namespace,
            api.PLURAL,
            name,
        )
    except _NETWORK_ERRORS as exc:
        raise _classify(exc) from exc
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None
    return body


def _written_config(live_cm: dict[str, Any] | None) -> BatchingConfig | None:
    config = desired.configmap_config(live_cm)
    if config is None and live_cm is not None:
        # Unreadable document: still never go below the generation it was stamped with.
        annotations = live_cm.get("metadata", {}).get("annotations") or {}
        stamped = annotations.get(CONFIG_GENERATION_ANNOTATION, "")
        if stamped.isdigit():
            return BatchingConfig(generation=int(stamped), max_queue=1, max_batch_size=1)
    return config


def _settled(deployment: dict[str, Any] | None, replicas: int) -> bool:
    if deployment is None:
        return False
    st = deployment.get("status") or {}
    gen_seen = (st.get("observedGeneration") or 0) >= deployment["metadata"].get("generation", 0)
    return bool(
        gen_seen
        and (st.get("readyReplicas") or 0) >= replicas
        and (st.get("updatedReplicas") or 0) == (st.get("replicas") or 0) == replicas
    )


def _read_child(c: Clients, child: dict[str, Any]) -> dict[str, Any] | None:
    meta = child["metadata"]
    if child["kind"] == "Deployment":
        return _read(c.apps.read_namespaced_deployment, meta["name"], meta["namespace"])
    if child["kind"] == "Service":
        return _read(c.core.read_namespaced_service, meta["name"], meta["namespace"])
    return _read(c.core.read_namespaced_config_map, meta["name"], meta["namespace"])


def _ensure(
    c: Clients, child: dict[str, Any], live: dict[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    """Server-side apply ``child`` if it is missing or drifted; the live object and what
    was done (None if nothing changed)."""
    kind, name = child["kind"], child["metadata"]["name"]
    if live is not None:
        drifted = drift(child, live)
        if not drifted:
            return live, None
    apply = {
        "Deployment": c.apps.patch_namespaced_deployment,
        "Service": c.core.patch_namespaced_service,
        "ConfigMap": c.core.patch_namespaced_config_map,
    }[kind]
    response = apply(
        name,
        child["metadata"]["namespace"],
        child,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
        _preload_content=False,
    )
    applied = _json(response)
    if live is None:
        return applied, f"Created {kind} {name}"
    if applied["metadata"].get("resourceVersion") == live["metadata"].get("resourceVersion"):
        return applied, None  # the comparison saw a difference the server normalises away
    fields = ", ".join(p.lstrip(".") for p in drifted[:4])
    return applied, f"Updated {kind} {name} ({fields})"


def _patch_status(c: Clients, bm: BatchedModel, patch: Mapping[str, Any]) -> None:
    c.custom.patch_namespaced_custom_object_status(
        api.GROUP,
        api.VERSION,
        bm.namespace,
        api.PLURAL,
        bm.name,
        {"status": dict(patch)},
        _content_type="application/merge-patch+json",
    )


def _note_transitions(
    body: dict[str, Any],
    before: Mapping[str, Any],
    patch: Mapping[str, Any],
    logger: Log,
) -> None:
    """An Event when Ready or Degraded changes status or reason."""
    old = {c.get("type"): c for c in before.get("conditions") or []}
    for cond in patch.get("conditions") or []:
        if cond["type"] not in (conditions.READY, conditions.DEGRADED):
            continue
        prev = old.get(cond["type"], {})
        if (prev.get("status"), prev.get("reason")) == (cond["status"], cond["reason"]):
            continue
        bad = (cond["type"] == conditions.DEGRADED) == (cond["status"] == "True")
        _event(
            body,
            "Warning" if bad else "Normal",
            cond["reason"],
            f"{cond['type']}={cond['status']}: {cond['message']}",
            logger,
        )


def _record_failure(
    bm: BatchedModel,
    body: dict[str, Any],
    error: Exception,
    c: Clients,
    logger: Log,
) -> None:
    """Best effort: show an operator-side failure in the Degraded condition."""
    reason = "InvalidChild" if isinstance(error, PermanentError) else "ReconcileError"
    previous = [
        cond.model_dump(by_alias=True, exclude_none=True) for cond in bm.status.conditions or []
    ]
    degraded = {
        "type": conditions.DEGRADED,
        "status": "True",
        "reason": reason,
        "message": str(error)[: conditions.MAX_MESSAGE],
        "observedGeneration": bm.metadata.generation,
    }
    merged = conditions.merge_conditions(
        previous,
        [*(p for p in previous if p["type"] != conditions.DEGRADED), degraded],
        conditions.now_rfc3339(),
    )
    patch = conditions.status_patch(body.get("status"), {"conditions": merged})
    if not patch:
        return
    try:
        _patch_status(c, bm, patch)
    except _NETWORK_ERRORS as exc:
        logger.warning(f"could not record the failure in status: {exc}")
        return
    _event(body, "Warning", reason, str(error), logger)


def _event(
    body: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    logger: Log,
) -> None:
    meta = body.get("metadata", {})
    LOGGER.info(f"{meta.get('namespace')}/{meta.get('name')}: {reason}: {message}")
    with contextlib.suppress(LookupError):  # outside a running operator: the log is the record
        kopf.event(_kopf_body(body), type=type_, reason=reason, message=message[:1024])


def _kopf_body(body: Mapping[str, Any]) -> kopf.Body:
    return kopf.Body(cast(kopf.RawBody, dict(body)))


def backoff(retry: int, cap: float | None = None) -> float:
    """Exponential backoff with jitter for kopf retries: 1, 2, 4, ... seconds, capped."""
    cap = cap or SETTINGS.retry_max_seconds
    return float(min(cap, 2.0**retry) * random.uniform(0.8, 1.0))


# --------------------------------------------------------------------------- kopf handlers


@kopf.on.startup()
def configure(*, settings: kopf.OperatorSettings, logger: Log, **_: Any) -> None:
    """Keep kopf's bookkeeping in annotations (the status schema is strict), post only
    warnings from logs as Events (explicit Events are posted by the reconciler), and size
    the thread pool for the synchronous handlers."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=DOMAIN)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=DOMAIN, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    clients()
    logger.info(f"batchpilot operator ready: runtime image {SETTINGS.runtime_image}")


def _reconcile(namespace: str | None, name: str, retry: int, logger: Log) -> None:
    if namespace is None:
        return
    try:
        converge(namespace, name, logger=logger)
    except TransientError as exc:
        raise kopf.TemporaryError(str(exc), delay=backoff(retry)) from exc
    except PermanentError as exc:
        # The same spec will fail the same way; the resync timer tries again later.
        raise kopf.PermanentError(str(exc)) from exc


@kopf.on.resume(*BM)
@kopf.on.create(*BM)
@kopf.on.update(*BM)
def reconcile(*, name: str, namespace: str | None, retry: int, logger: Log, **_: Any) -> None:
    """A BatchedModel appeared, changed, or the operator (re)started."""
    _reconcile(namespace, name, retry, logger)


@kopf.timer(*BM, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
def resync(*, name: str, namespace: str | None, logger: Log, **_: Any) -> None:
    """Level-triggered safety net: converge every BatchedModel periodically. Failures are
    logged, never raised: the timer must keep ticking, and the next tick retries."""
    if namespace is None:
        return
    try:
        converge(namespace, name, logger=logger, coalesce=True)
    except (TransientError, PermanentError) as exc:
        logger.warning(f"resync failed, retried in {SETTINGS.resync_seconds:.0f}s: {exc}")


@kopf.on.delete(*BM, optional=True)
def deleted(*, name: str, namespace: str | None, **_: Any) -> None:
    """No finalizer: owner references let the garbage collector remove the children."""
    if namespace:
        forget(namespace, name)


def _owner(body: Mapping[str, Any]) -> str | None:
    for ref in body.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == api.KIND and ref.get("apiVersion", "").startswith(api.GROUP):
            return str(ref["name"])
    return None


def _nudge(namespace: str | None, owner: str | None, logger: Log) -> None:
    if not namespace or not owner:
        return
    try:
        converge(namespace, owner, logger=logger, coalesce=True)
    except (TransientError, PermanentError) as exc:
        logger.warning(f"reconcile of {namespace}/{owner} failed, retried on resync: {exc}")


@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("", "v1", "services", labels=OWNED)
@kopf.on.event("", "v1", "configmaps", labels=OWNED)
def child_changed(*, body: kopf.Body, namespace: str | None, logger: Log, **_: Any) -> None:
    """A child changed or vanished (scaled or edited by hand, deleted): converge its owner."""
    _nudge(namespace, _owner(body), logger)


@kopf.on.event("", "v1", "pods", labels=OWNED)
def pod_changed(*, body: kopf.Body, namespace: str | None, logger: Log, **_: Any) -> None:
    """A runtime pod changed (ready, crashed, unschedulable): refresh its owner's status."""
    labels = body.get("metadata", {}).get("labels") or {}
    _nudge(namespace, labels.get(INSTANCE_LABEL), logger)


@kopf.on.probe(id="models")
def models_probe(**_: Any) -> int:
    """Liveness report: how many BatchedModels this process has seen."""
    with _slots_lock:
        return len(_slots)


@kopf.on.probe(id="reconciles")
def reconciles_probe(**_: Any) -> int:
    """Liveness report: how many reconciles this process has completed."""
    with _slots_lock:
        return _completed


# --------------------------------------------------------------------------- tuning loop


class KubeForLoop:
    """The tuning loop's access to the cluster (:class:`batchpilot_operator.loop.Kube`)."""

    def __init__(self, logger: Log = LOGGER, api_clients: Clients | None = None) -> None:
        self.logger = logger
        self._clients = api_clients

    @property
    def c(self) -> Clients:
        return self._clients or clients()

    def read(self, namespace: str, name: str) -> BatchedModel | None:
        body = _read_live_model(self.c, namespace, name)
        return BatchedModel.from_body(body) if body is not None else None

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        try:
            listing = self.c.core.list_namespaced_pod(
                namespace, label_selector=selector_string(name), _preload_content=False
            )
        except _NETWORK_ERRORS as exc:
            raise _classify(exc) from exc
        items: list[dict[str, Any]] = _json(listing).get("items", [])
        return items

    def apply(
        self,
        namespace: str,
        name: str,
        *,
        adjust: Adjust,
        extra_status: Mapping[str, Any],
        in_force: BatchingConfig | None,
    ) -> TunedState | None:
        result = converge(
            namespace,
            name,
            logger=self.logger,
            adjust=adjust,
            extra_status=extra_status,
            in_force=in_force,
            api_clients=self._clients,
        )
        return result.state if result is not None else None

    def touch_pods(self, namespace: str, pods: list[str], generation: int) -> None:
        patch = {"metadata": {"annotations": {CONFIG_GENERATION_ANNOTATION: str(generation)}}}
        for pod in pods:
            try:
                self.c.core.patch_namespaced_pod(pod, namespace, patch, _preload_content=False)
            except ApiException as exc:
                if exc.status != 404:  # a pod deleted meanwhile needs no refresh
                    self.logger.warning(f"could not touch pod {pod}: {exc.status} {exc.reason}")


@kopf.daemon(
    *BM,
    field="spec.autoscaling.enabled",
    value=True,
    cancellation_timeout=30.0,
)
async def tune(
    *,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    logger: Log,
    **_: Any,
) -> None:
    """The tuning loop of one BatchedModel with autoscaling enabled: a tick at once (the
    baseline), then one per ``intervalSeconds``. Kopf starts it when autoscaling is turned on
    and stops it when it is turned off or the object goes. A failed tick is logged; the
    next one tries again."""
    if namespace is None:
        return
    loop = TuningLoop(namespace, name, KubeForLoop(logger), logger=logger)
    interval = float(body.get("spec", {}).get("autoscaling", {}).get("intervalSeconds", 15))
    while not stopped:
        started = loop.clock()
        try:
            result = await loop.tick()
        except (TransientError, PermanentError, OSError) as exc:
            logger.warning(f"tuning tick failed, retried in {interval:g}s: {exc}")
        else:
            if result is None:
                return  # deleted
            interval = result.interval_s
            for event in result.events:
                with contextlib.suppress(LookupError):
                    kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        await stopped.wait(max(0.0, interval - (loop.clock() - started)))
