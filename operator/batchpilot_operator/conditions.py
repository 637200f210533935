"""Status and conditions, computed purely from what the operator observed.

Three conditions, after the Kubernetes API conventions (no phase string):

- ``Ready``: every desired replica is ready. Its reason is what ``kubectl get bm`` prints in
  STATUS: ``Ready``, ``ScaledToZero``, ``WaitingForReplicas``, or the pods' problem
  (``CrashLoopBackOff``, ``ImagePullBackOff``, ``Unschedulable``, ...).
- ``Progressing``: a rollout or a scale is under way (``RollingOut``, ``ScalingUp``,
  ``ScalingDown``), or not (``Complete``, ``ProgressDeadlineExceeded``).
- ``Degraded``: something needs a human (a pod's waiting or terminated reason, a failed
  Deployment, an operator error), or ``AsExpected``. A runtime that exited because its model
  cannot serve the task (``ModelRefused``, with the runtime's own words) outranks the crash
  loop that follows.

``lastTransitionTime`` moves only when a condition's status flips; a new reason or message
alone keeps it, so an unchanged situation always yields an identical status.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from batchpilot_contract.labels import selector_string
from batchpilot_contract.lifecycle import EXIT_MODEL_REFUSED, MODEL_REFUSED_REASON
from batchpilot_operator.api import EMULATED_SCHEME, BatchedModel, TunedState

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
CONDITION_TYPES = (READY, PROGRESSING, DEGRADED)

BENIGN_WAITING_REASONS = frozenset({"", "ContainerCreating", "PodInitializing"})
"""Waiting reasons of a container on its way up; any other (CrashLoopBackOff,
ImagePullBackOff, ErrImagePull, CreateContainerConfigError, a runtime's own reason such as
ImageNotRunnable, ...) is a problem worth a Degraded condition."""
MAX_MESSAGE = 1024


def now_rfc3339(now: datetime | None = None) -> str:
    """A timestamp as Kubernetes writes them: UTC, seconds, ``Z``."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Problem:
    """Something wrong with a pod or the Deployment, named by its Kubernetes reason."""

    reason: str
    message: str


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def pod_problems(pods: Iterable[Mapping[str, Any]]) -> list[Problem]:
    """The problems of the runtime pods: waiting/terminated container reasons, failed or
    unschedulable pods. Pods being deleted are ignored."""
    problems: list[Problem] = []
    for pod in pods:
        if _get(pod, "metadata", "deletionTimestamp"):
            continue
        name = _get(pod, "metadata", "name") or "?"
        status = _get(pod, "status") or {}
        if status.get("phase") == "Failed":
            reason = status.get("reason") or "PodFailed"
            problems.append(Problem(reason, f"pod {name}: {status.get('message') or reason}"))
            continue
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reason = cond.get("reason") or "Unschedulable"
                problems.append(Problem(reason, f"pod {name}: {cond.get('message') or reason}"))
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for cs in statuses:
            problem = _container_problem(name, cs)
            if problem:
                problems.append(problem)
    return problems


def _container_problem(pod: str, cs: Mapping[str, Any]) -> Problem | None:
    container = cs.get("name", "?")
    waiting = _get(cs, "state", "waiting")
    terminated = _get(cs, "state", "terminated")
    last = _get(cs, "lastState", "terminated")
    refused = next(
        (t for t in (terminated, last) if t and t.get("exitCode") == EXIT_MODEL_REFUSED), None
    )
    if refused is not None:
        # Restarting will not help: say why the model was refused, not that the pod loops.
        why = refused.get("message") or "the model cannot serve its task (see the pod's log)"
        return Problem(MODEL_REFUSED_REASON, f"pod {pod} container {container}: {why}")
    if waiting and (waiting.get("reason") or "") not in BENIGN_WAITING_REASONS:
        reason = waiting["reason"]
        text = f"pod {pod} container {container}: {reason}"
        if waiting.get("message"):
            text += f": {waiting['message']}"
        if last:
            text += f" (last exit: {last.get('reason') or 'Error'}, code {last.get('exitCode')})"
        return Problem(reason, text)
    if terminated and terminated.get("reason") != "Completed":
        reason = terminated.get("reason") or "Error"
        code = terminated.get("exitCode")
        text = f"pod {pod} container {container} terminated: {reason}, code {code}"
        if terminated.get("message"):
            text += f": {terminated['message']}"
        return Problem(reason, text)
    return None


def deployment_problems(deployment: Mapping[str, Any] | None) -> list[Problem]:
    """A Deployment that gave up (ProgressDeadlineExceeded) or cannot create pods."""
    problems = []
    for cond in _get(deployment, "status", "conditions") or []:
        if (
            cond.get("type") == "Progressing"
            and cond.get("status") == "False"
            and cond.get("reason") == "ProgressDeadlineExceeded"
        ):
            problems.append(Problem("ProgressDeadlineExceeded", cond.get("message") or ""))
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            problems.append(
                Problem(cond.get("reason") or "ReplicaFailure", cond.get("message") or "")
            )
    return problems


def summarize(problems: Sequence[Problem]) -> Problem | None:
    """The most frequent reason, with the first message of that reason and a count."""
    if not problems:
        return None
    reason, count = Counter(p.reason for p in problems).most_common(1)[0]
    first = next(p for p in problems if p.reason == reason)
    message = first.message
    if len(problems) > 1:
        message += f" ({len(problems)} problems, {count} of them {reason})"
    return Problem(reason, message[:MAX_MESSAGE])


@dataclass(frozen=True)
class Observed:
    """What the operator saw of its children in one reconcile."""

    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    error: Problem | None = None
    """An operator-side failure (for example an API error), shown as Degraded."""


def desired_conditions(
    generation: int | None, desired_replicas: int, observed: Observed
) -> list[dict[str, Any]]:
    """Ready, Progressing and Degraded (without timestamps) for what was observed."""
    dep = observed.deployment
    st = _get(dep, "status") or {}
    total = int(st.get("replicas") or 0)
    ready = int(st.get("readyReplicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    dep_generation = _get(dep, "metadata", "generation")
    seen = dep is not None and (st.get("observedGeneration") or 0) >= (dep_generation or 0)

    problems = deployment_problems(dep) + pod_problems(observed.pods)
    if observed.error:
        problems.insert(0, observed.error)
    worst = summarize(problems)
    stalled = any(p.reason == "ProgressDeadlineExceeded" for p in problems)

    rolled_out = seen and updated >= desired_replicas and total == updated
    if dep is None:
        progressing = ("True", "Creating", "creating the Deployment")
    elif stalled:
        progressing = ("False", "ProgressDeadlineExceeded", "the rollout made no progress")
    elif not seen or not rolled_out:
        progressing = (
            "True",
            "RollingOut",
            f"{updated} of {desired_replicas} replicas updated, {total} pods in total",
        )
    elif total > desired_replicas:
        progressing = ("True", "ScalingDown", f"{total} pods, {desired_replicas} desired")
    elif available < desired_replicas:
        progressing = ("True", "ScalingUp", f"{available} of {desired_replicas} available")
    else:
        progressing = ("False", "Complete", f"{desired_replicas} replicas up to date")

    if desired_replicas == 0:
        ready_c = ("True", "ScaledToZero", "no replicas desired")
    elif dep is not None and ready >= desired_replicas:
        ready_c = ("True", "Ready", f"{ready} of {desired_replicas} replicas ready")
    elif worst:
        ready_c = ("False", worst.reason, f"{ready} of {desired_replicas} ready; {worst.message}")
    else:
        ready_c = ("False", "WaitingForReplicas", f"{ready} of {desired_replicas} replicas ready")

    if worst:
        degraded = ("True", worst.reason, worst.message)
    else:
        degraded = ("False", "AsExpected", "no problems seen")

    out = []
    for ctype, (status, reason, message) in zip(
        CONDITION_TYPES, (ready_c, progressing, degraded), strict=True
    ):
        cond: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def merge_conditions(
    previous: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """``new`` with ``lastTransitionTime``: kept from ``previous`` when the status is the
    same, ``now`` when it flipped or the condition is new. Conditions of other types that
    ``previous`` holds (set by someone else) are kept after ours."""
    before = {c.get("type"): c for c in previous or []}
    out = []
    for cond in new:
        old = before.get(cond["type"])
        keep = old is not None and old.get("status") == cond["status"]
        stamp = old.get("lastTransitionTime") if keep and old else None
        out.append({**cond, "lastTransitionTime": stamp or now})
    ours = {c["type"] for c in new}
    out += [dict(c) for c in previous or [] if c.get("type") not in ours]
    return out


def build_status(
    bm: BatchedModel,
    state: TunedState,
    observed: Observed,
    now: str,
) -> dict[str, Any]:
    """The status the reconciler sees for what was observed, with the config written as the
    one in force (:func:`batchpilot_operator.ownership.reconciler_fields` keeps the fields it
    writes)."""
    st = _get(observed.deployment, "status") or {}
    ready = int(st.get("readyReplicas") or 0)
    config = state.batching_config(bm.spec)
    conditions = desired_conditions(bm.metadata.generation, state.replicas, observed)
    previous = [c.model_dump(by_alias=True, exclude_none=True) for c in bm.status.conditions or []]
    status: dict[str, Any] = {
        "observedGeneration": bm.metadata.generation,
        "replicas": int(st.get("replicas") or 0),
        "readyReplicas": ready,
        "ready": f"{ready}/{state.replicas}",
        "selector": selector_string(bm.name),
        "maxBatchSize": config.max_batch_size,
        "maxWaitMs": config.max_wait_ms,
        "configGeneration": config.generation,
        "tuned": state.to_status(),
        "conditions": merge_conditions(previous, conditions, now),
    }
    emulated = emulated_profile(bm)
    if emulated or bm.status.emulated:  # None clears it when the model becomes a real one
        status["emulated"] = emulated
    return status


def emulated_profile(bm: BatchedModel) -> str | None:
    """The profile of an emulated accelerator (``emulated://PROFILE``), else None."""
    uri = bm.spec.model.uri
    return uri.removeprefix(EMULATED_SCHEME) if uri.startswith(EMULATED_SCHEME) else None


def status_patch(current: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``wanted`` whose values differ from ``current`` (empty: nothing to write)."""
    current = current or {}
    return {k: v for k, v in wanted.items() if current.get(k) != v}
