"""One level-triggered, idempotent reconcile of a BatchedModel: :func:`converge`.

``converge`` reads the BatchedModel afresh, takes the tuned state to render from spec and
status alone (:func:`batchpilot_operator.ownership.state_to_render`), renders the children
with the pure builders of :mod:`batchpilot_operator.desired`, compares each with the live
object and applies it (server-side apply, forced) only where it drifted, then writes the
status fields it owns (:data:`batchpilot_operator.ownership.RECONCILER_KEYS`) only if they
changed.

Runs for one BatchedModel are serialised by a per-object lock, and a trigger that arrives
while another run is already waiting is folded into it. The tuning loop does not run inside
it: it writes its own status fields, conditionally on the version it decided from, and then
calls ``converge`` like any other trigger.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from batchpilot_contract.batching import BatchingConfig, configmap_name
from batchpilot_contract.labels import CONFIG_GENERATION_ANNOTATION, MANAGED_BY, selector_string
from batchpilot_operator import api, conditions, desired, ownership
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.kube import (
    LOGGER,
    NETWORK_ERRORS,
    Clients,
    Log,
    PermanentError,
    as_json,
    classify,
    clients,
    drift,
    event,
    kopf_body,
    patch_status,
    read,
    read_live_model,
)
from batchpilot_operator.settings import OperatorSettings

FIELD_MANAGER = MANAGED_BY
CONFLICT_ATTEMPTS = 3
"""Reconciles tried in a row when a conditional status write meets a newer object."""
SETTINGS = OperatorSettings.from_env()


@dataclass
class Reconciled:
    """What one :func:`converge` run did."""

    state: TunedState
    actions: list[str] = field(default_factory=list)
    status_patch: dict[str, Any] = field(default_factory=dict)


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
    coalesce: bool = False,
    settings: OperatorSettings | None = None,
    api_clients: Clients | None = None,
) -> Reconciled | None:
    """Bring the children and status of one BatchedModel in line with its spec and status:
    the children rendered from the spec and the tuned state the status leads to (with
    autoscaling on, the knobs the tuning loop set), the reconciler's status fields written.

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
            settings=settings or SETTINGS,
            c=api_clients or clients(),
        )


def forget(namespace: str, name: str) -> None:
    """Drop the per-object bookkeeping of a deleted BatchedModel."""
    with _slots_lock:
        _slots.pop((namespace, name), None)


def models_seen() -> int:
    """How many BatchedModels this process has reconciled and not seen deleted."""
    with _slots_lock:
        return len(_slots)


def reconciles_completed() -> int:
    """How many reconciles this process has completed."""
    with _slots_lock:
        return _completed


def _converge_locked(
    namespace: str,
    name: str,
    *,
    logger: Log,
    settings: OperatorSettings,
    c: Clients,
) -> Reconciled | None:
    global _completed
    for attempt in range(CONFLICT_ATTEMPTS):
        body = read_live_model(c, namespace, name)
        if body is None:
            return None  # the garbage collector removes the children through owner references
        bm = BatchedModel.from_body(body)
        try:
            result = _apply(bm, body, logger=logger, s=settings, c=c)
        except ApiException as exc:
            if exc.status == 409 and attempt + 1 < CONFLICT_ATTEMPTS:
                continue  # a conditional status write met a newer object: read it again
            error = classify(exc)
            _record_failure(bm, body, error, c, logger)
            raise error from exc
        except NETWORK_ERRORS as exc:
            error = classify(exc)
            _record_failure(bm, body, error, c, logger)
            raise error from exc
        with _slots_lock:
            _completed += 1
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")


def _apply(
    bm: BatchedModel,
    body: dict[str, Any],
    *,
    logger: Log,
    s: OperatorSettings,
    c: Clients,
) -> Reconciled:
    ns, name = bm.namespace, bm.name
    state = ownership.state_to_render(bm)
    live_cm = read(c.core.read_namespaced_config_map, configmap_name(name), ns)
    state = api.settle_generation(state, bm.spec, _written_config(live_cm))

    wanted = desired.desired_children(bm, state, s)
    kopf.adopt(wanted, owner=kopf_body(body))
    result = Reconciled(state)
    deployment: dict[str, Any] | None = None
    for child in wanted:
        live = live_cm if child["kind"] == "ConfigMap" else _read_child(c, child)
        applied, action = _ensure(c, child, live)
        if action:
            result.actions.append(action)
            event(body, "Normal", action.split()[0], action, logger)
        if child["kind"] == "Deployment":
            deployment = applied

    ready_and_done = _settled(deployment, state.replicas)
    pods: list[dict[str, Any]] = []
    if not ready_and_done:
        selector = selector_string(name)
        listing = c.core.list_namespaced_pod(ns, label_selector=selector, _preload_content=False)
        pods = as_json(listing).get("items", [])
    observed = conditions.Observed(deployment, pods)
    now = conditions.now_rfc3339()
    autoscaling = bm.spec.autoscaling.enabled
    wanted_status = ownership.reconciler_fields(
        conditions.build_status(bm, state, observed, now), autoscaling
    )
    patch = conditions.status_patch(body.get("status"), wanted_status)
    if patch:
        # With autoscaling off the reconciler writes the loop's fields too (it clears them and
        # shows the config written as in force): conditionally, so that a loop turned on
        # since the read keeps its own.
        loops = any(k in ownership.LOOP_KEYS for k in patch)
        version = bm.metadata.resource_version if loops else None
        patch_status(c, ns, name, patch, version)
        _note_transitions(body, body.get("status") or {}, patch, logger)
    result.status_patch = patch
    return result


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
        return read(c.apps.read_namespaced_deployment, meta["name"], meta["namespace"])
    if child["kind"] == "Service":
        return read(c.core.read_namespaced_service, meta["name"], meta["namespace"])
    return read(c.core.read_namespaced_config_map, meta["name"], meta["namespace"])


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
    applied = as_json(response)
    if live is None:
        return applied, f"Created {kind} {name}"
    if applied["metadata"].get("resourceVersion") == live["metadata"].get("resourceVersion"):
        return applied, None  # the comparison saw a difference the server normalises away
    fields = ", ".join(p.lstrip(".") for p in drifted[:4])
    return applied, f"Updated {kind} {name} ({fields})"


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
        event(
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
        patch_status(c, bm.namespace, bm.name, patch)
    except NETWORK_ERRORS as exc:
        logger.warning(f"could not record the failure in status: {exc}")
        return
    event(body, "Warning", reason, str(error), logger)
