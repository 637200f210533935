"""A BatchedModel under load on the local cluster, recorded: what `make demo` shows and the
end-to-end test asserts.

The operator is installed from the Helm chart (it runs as a pod with the chart's RBAC), the
model from ``examples/embedding-minilm.yaml`` (all-MiniLM-L6-v2 from the node's model cache),
and the load comes from :mod:`batchpilot_localcluster.loadgen` against the ready pods (there
is no kube-proxy here: clients call pod IPs, as a service mesh or a headless Service would).
While the load runs, the BatchedModel's status is sampled once a second.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from batchpilot_contract.pod import env_name
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.loadgen import LoadReport, Outcome, RateSchedule, run_load
from batchpilot_localcluster.waits import wait_for

JSON = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "batchpilot"
EXAMPLE = REPO / "examples" / "embedding-minilm.yaml"
EMULATED_EXAMPLE = REPO / "examples" / "embedding-emulated-gpu.yaml"
GROUP_PLURAL = "batchedmodels.batchpilot.dev"


def install_operator(
    cluster: LocalCluster,
    namespace: str,
    *,
    release: str = "batchpilot",
    values: Mapping[str, Any] | None = None,
) -> str:
    """``helm upgrade --install`` the chart into ``namespace`` and wait for the operator to be
    ready; the command's output (the chart's NOTES)."""
    result = cluster.helm(
        "upgrade", "--install", release, str(CHART), "-n", namespace, "--create-namespace",
        "--wait", "--timeout", "5m", "-f", "-",
        input=yaml.safe_dump(dict(values or {})),
    )  # fmt: skip
    return result.stdout


def merge(base: JSON, overrides: Mapping[str, Any]) -> JSON:
    """``base`` with ``overrides`` merged in, mappings recursively (a new object)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def example_model(overrides: Mapping[str, Any] | None = None, path: Path = EXAMPLE) -> JSON:
    """The example BatchedModel manifest, with ``overrides`` merged into it."""
    manifest: JSON = yaml.safe_load(path.read_text())
    return merge(manifest, overrides or {})


def local_model(
    name: str,
    *,
    target_ms: float,
    interval_s: int,
    scale_down_delay_s: int,
    max_replicas: int = 2,
) -> JSON:
    """The example model for this machine: one CPU thread per replica (standing in for one
    GPU, so replicas do not fight over cores) and a faster loop than the example's."""
    return example_model(
        {
            "metadata": {"name": name},
            "spec": {
                "env": [{"name": env_name("threads"), "value": "1"}],
                "autoscaling": {
                    "minReplicas": 1,
                    "maxReplicas": max_replicas,
                    "latencyTargetMs": target_ms,
                    "intervalSeconds": interval_s,
                    "scaleDownDelaySeconds": scale_down_delay_s,
                },
            },
        }
    )


def emulated_model(
    name: str,
    *,
    target_ms: float,
    interval_s: int,
    scale_down_delay_s: int,
    min_replicas: int = 1,
    max_replicas: int = 8,
) -> JSON:
    """The emulated-GPU example (no model runs: batches are timed waits from the
    ``bert-large-l4`` profile), one emulated GPU per replica, with a faster loop."""
    return example_model(
        {
            "metadata": {"name": name},
            "spec": {
                "replicas": min_replicas,
                "autoscaling": {
                    "minReplicas": min_replicas,
                    "maxReplicas": max_replicas,
                    "latencyTargetMs": target_ms,
                    "intervalSeconds": interval_s,
                    "scaleDownDelaySeconds": scale_down_delay_s,
                },
            },
        },
        path=EMULATED_EXAMPLE,
    )


@dataclass(frozen=True)
class StatusSample:
    """A BatchedModel's status at one instant (``t`` in seconds since the load started)."""

    t: float
    ready: int
    desired: int
    max_batch_size: int | None
    max_wait_ms: float | None
    config_generation: int | None
    requests_per_second: float | None
    queue_depth: float | None
    p95_latency_ms: float | None
    action: str | None
    reason: str | None
    needed_replicas: int | None
    state: str

    @classmethod
    def from_object(cls, t: float, bm: JSON) -> StatusSample:
        st = bm.get("status") or {}
        ready, _, desired = str(st.get("ready") or "0/0").partition("/")
        decision = st.get("lastDecision") or {}
        conditions = {c["type"]: c for c in st.get("conditions") or []}
        ready_cond = conditions.get("Ready") or {}
        return cls(
            t=t,
            ready=int(ready or 0),
            desired=int(desired or 0),
            max_batch_size=st.get("maxBatchSize"),
            max_wait_ms=st.get("maxWaitMs"),
            config_generation=st.get("configGeneration"),
            requests_per_second=st.get("requestsPerSecond"),
            queue_depth=st.get("queueDepth"),
            p95_latency_ms=st.get("p95LatencyMs"),
            action=decision.get("action"),
            reason=decision.get("reason"),
            needed_replicas=decision.get("neededReplicas"),
            state=str(ready_cond.get("reason") or ready_cond.get("status") or "Unknown"),
        )


@dataclass
class ScenarioResult:
    """The load's outcomes and the status samples taken while it ran."""

    load: LoadReport
    samples: list[StatusSample] = field(default_factory=list)

    def p95_ms(self, start: float, end: float) -> float | None:
        """Client-side p95 of the successful requests sent in ``[start, end)``."""
        return LoadReport.p95_ms(self.load.window(start, end))

    def within(self, target_ms: float, start: float = 0.0, end: float = float("inf")) -> float:
        """Share of the requests sent in ``[start, end)`` answered 200 within ``target_ms``."""
        window = self.load.window(start, end)
        if not window:
            return 1.0
        good = sum(1 for o in window if o.status == 200 and o.latency_s * 1000 <= target_ms)
        return good / len(window)


def get_model(cluster: LocalCluster, namespace: str, name: str) -> JSON | None:
    """The BatchedModel object, or None."""
    return cluster.api.get_or_none(
        f"/apis/batchpilot.dev/v1alpha1/namespaces/{namespace}/batchedmodels/{name}"
    )


def wait_model_ready(
    cluster: LocalCluster, namespace: str, name: str, *, replicas: int = 1, timeout: float = 300.0
) -> None:
    """Wait until the BatchedModel's status shows ``replicas`` ready of as many desired
    (``1/1`` by default); a timeout names the status last seen."""

    def status() -> JSON:
        return (get_model(cluster, namespace, name) or {}).get("status") or {}

    wait_for(
        lambda: status().get("ready") == f"{replicas}/{replicas}",
        timeout=timeout,
        what=f"{namespace}/{name}'s {replicas} replica(s) to be ready",
        describe=lambda: f"status {status()}",
    )


def model_events(cluster: LocalCluster, namespace: str, name: str) -> list[JSON]:
    """Events about the BatchedModel that exists now, oldest first: those of an earlier
    object of the same name (a previous run, kept for the Event TTL) are left out."""
    bm = get_model(cluster, namespace, name)
    if bm is None:
        return []
    uid = bm["metadata"]["uid"]
    items: list[JSON] = cluster.api.get(
        f"/api/v1/namespaces/{namespace}/events",
        {"fieldSelector": f"involvedObject.uid={uid},involvedObject.kind=BatchedModel"},
    )["items"]
    return oldest_first(items)


def oldest_first(events: list[JSON]) -> list[JSON]:
    """Events in the order they happened. ``lastTimestamp`` is stored to the second, so
    ``eventTime`` (microseconds, set by kopf) decides first where there is one. Compared as
    times, not text: ``...:30Z`` sorts after ``...:30.5Z`` as text."""

    def when(event: JSON) -> datetime:
        stamp = event.get("eventTime") or event.get("lastTimestamp")
        return datetime.fromisoformat(stamp) if stamp else _NO_TIME

    return sorted(events, key=when)


_NO_TIME = datetime.min.replace(tzinfo=UTC)


async def drive(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    rate: RateSchedule,
    duration_s: float,
    *,
    sample_every_s: float = 1.0,
    on_sample: Callable[[StatusSample, ScenarioResult], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> ScenarioResult:
    """Run the load against the model's ready pods for ``duration_s`` while sampling its
    status; ``on_sample`` sees each sample as it comes (for a live display)."""
    result = ScenarioResult(LoadReport())
    start = time.monotonic()

    async def endpoints() -> list[str]:
        found = await asyncio.to_thread(cluster.service_endpoints, namespace, name, "http")
        return [f"http://{address}" for address in found]

    async def sample_status() -> None:
        while True:
            bm = await asyncio.to_thread(get_model, cluster, namespace, name)
            if bm is not None:
                sample = StatusSample.from_object(time.monotonic() - start, bm)
                result.samples.append(sample)
                if on_sample is not None:
                    on_sample(sample, result)
            await asyncio.sleep(sample_every_s)

    def record(outcome: Outcome) -> None:
        result.load.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    sampler = asyncio.create_task(sample_status())
    try:
        report = await run_load(endpoints, rate, duration_s, model=name, on_outcome=record)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    result.load = report
    return result
