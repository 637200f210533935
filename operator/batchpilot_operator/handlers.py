"""The kopf registration: thin handlers that end in one reconcile,
:func:`batchpilot_operator.reconcile.converge`, and the tuning loop's daemon.

Every path that may need action ends in ``converge`` for the BatchedModel concerned: its
create/update/resume handlers, a periodic resync timer, and watches on the children
(Deployments, Services, ConfigMaps, pods) that map an event back to the owner.

Handlers are synchronous (kopf runs them in its thread pool) because the kubernetes client
is. The one exception is the tuning loop: an async kopf daemon per BatchedModel with
autoscaling enabled (:func:`tune`), which runs :class:`batchpilot_operator.loop.TuningLoop`
once per ``intervalSeconds`` and reaches the API through
:class:`batchpilot_operator.loopkube.KubeForLoop` in a thread.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Mapping
from typing import Any

import kopf

from batchpilot_contract.labels import DOMAIN, INSTANCE_LABEL, owned_selector
from batchpilot_operator import api
from batchpilot_operator.kube import Log, PermanentError, TransientError, clients
from batchpilot_operator.loop import TuningLoop
from batchpilot_operator.loopkube import KubeForLoop
from batchpilot_operator.reconcile import (
    SETTINGS,
    converge,
    forget,
    models_seen,
    reconciles_completed,
)

BM = (api.GROUP, api.VERSION, api.PLURAL)
OWNED = owned_selector()


def backoff(retry: int, cap: float | None = None) -> float:
    """Exponential backoff with jitter for kopf retries: 1, 2, 4, ... seconds, capped."""
    cap = cap or SETTINGS.retry_max_seconds
    return float(min(cap, 2.0**retry) * random.uniform(0.8, 1.0))


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
    return models_seen()


@kopf.on.probe(id="reconciles")
def reconciles_probe(**_: Any) -> int:
    """Liveness report: how many reconciles this process has completed."""
    return reconciles_completed()


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
            interval = result.interval_s  # a dropped tick (result.conflict) waits one too
            for event in result.events:
                with contextlib.suppress(LookupError):
                    kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        await stopped.wait(max(0.0, interval - (loop.clock() - started)))
