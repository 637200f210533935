"""Faults the control plane must survive, on the local cluster with EMULATED runtime pods.

Each runtime pod is the real runtime (HTTP, batcher, metrics, config reload) on the
``bert-large-l4`` emulated accelerator, run by the node agent as a local process; the
operator runs as a local process of this checkout (:mod:`batchpilot_localcluster.operatorproc`)
so that it can be killed with SIGKILL, at an exact point of a tuning tick when it runs through
``faulty_operator.py``. :mod:`batchpilot_localcluster.faults` pauses, resumes and kills pod
processes and restarts kube-apiserver and etcd.

- The operator killed between the loop's status write and its reconcile, and inside that
  reconcile between the ConfigMap and the Deployment writes: a new process converges with
  no duplicate child, the config generation the loop decided in force on every pod, and
  the loop's memory resumed from ``status.loop``.
- kube-apiserver and etcd restarted under load: every request is answered, the operator
  reconnects (a spec edit made afterwards is rendered), and no child or pod is recreated.
- A pod paused with SIGSTOP under load: the loop counts it missing (its load assumed like
  the others', never zero) and does not scale down until it answers again.
- A pod killed with SIGKILL under load: it is restarted and serves again, and every request
  sent to the other pod is answered.

Bounded: each test well under two minutes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from batchpilot_contract.batching import configmap_name
from batchpilot_contract.labels import CONFIG_GENERATION_ANNOTATION, selector_string
from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.faults import restart_api_server, signal_pod
from batchpilot_localcluster.loadgen import LoadReport, Outcome, run_load, steps
from batchpilot_localcluster.operatorproc import OperatorProcess
from batchpilot_localcluster.scenario import emulated_model, get_model, merge, wait_model_ready
from batchpilot_localcluster.waits import wait_for
from batchpilot_operator.policy import Rule
from batchpilot_operator.policy.rules import Note

JSON = dict[str, Any]
ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "batchedmodels.yaml"
FAULTY = Path(__file__).with_name("faulty_operator.py")
NAME = "encoder"
INTERVAL_S = 2
RATE = 30.0  # requests/s: a third of what one emulated replica carries within target


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crd(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=established", "crd/batchedmodels.batchpilot.dev", "--timeout=60s"
    )


@pytest.fixture
def operator(
    cluster: LocalCluster, namespace: str, crd: None, tmp_path: Path
) -> Iterator[OperatorProcess]:
    """An operator process for the test's namespace, not started yet; stopped afterwards."""
    op = OperatorProcess(
        cluster, namespace, tmp_path / "operator.log", env={"BATCHPILOT_RESYNC_SECONDS": "30"}
    )
    try:
        yield op
    finally:
        if op.alive:
            op.stop()


def model(*, replicas: int, min_replicas: int, scale_down_delay_s: int) -> JSON:
    """The emulated model with a fast loop (one emulated GPU per replica)."""
    manifest = emulated_model(
        NAME,
        target_ms=150,
        interval_s=INTERVAL_S,
        scale_down_delay_s=scale_down_delay_s,
        min_replicas=min_replicas,
        max_replicas=4,
    )
    return merge(manifest, {"spec": {"replicas": replicas}})


# ----------------------------------------------------------------------------------- helpers


def status(cluster: LocalCluster, namespace: str) -> JSON:
    return (get_model(cluster, namespace, NAME) or {}).get("status") or {}


def items(cluster: LocalCluster, path: str, selector: str = "") -> list[JSON]:
    params = {"labelSelector": selector} if selector else None
    found: list[JSON] = cluster.api.get(path, params)["items"]
    return found


def children(cluster: LocalCluster, namespace: str) -> dict[str, list[str]]:
    """kind -> uids of the objects the BatchedModel owns (and the ReplicaSets of its
    Deployment): one of each, always."""
    bm = get_model(cluster, namespace, NAME)
    assert bm is not None
    uid = bm["metadata"]["uid"]
    out: dict[str, list[str]] = {}
    paths = {
        "Deployment": f"/apis/apps/v1/namespaces/{namespace}/deployments",
        "ConfigMap": f"/api/v1/namespaces/{namespace}/configmaps",
        "Service": f"/api/v1/namespaces/{namespace}/services",
    }
    for kind, path in paths.items():
        owned = [
            o["metadata"]["uid"]
            for o in items(cluster, path)
            if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]
        out[kind] = sorted(owned)
    replica_sets = items(cluster, f"/apis/apps/v1/namespaces/{namespace}/replicasets")
    out["ReplicaSet"] = sorted(
        rs["metadata"]["uid"]
        for rs in replica_sets
        if any(
            r.get("uid") in out["Deployment"] for r in rs["metadata"].get("ownerReferences") or []
        )
    )
    return out


def pods(cluster: LocalCluster, namespace: str) -> list[JSON]:
    return items(cluster, f"/api/v1/namespaces/{namespace}/pods", selector_string(NAME))


def restarts(pod: JSON) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses") or [])


def deployment(cluster: LocalCluster, namespace: str) -> JSON:
    found: JSON = cluster.api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{NAME}")
    return found


def configmap(cluster: LocalCluster, namespace: str) -> JSON:
    cm = cluster.api.get(f"/api/v1/namespaces/{namespace}/configmaps/{configmap_name(NAME)}")
    config: JSON = json.loads(cm["data"]["batching.json"])
    return config


def endpoints(cluster: LocalCluster, namespace: str) -> list[str]:
    return [f"http://{a}" for a in cluster.service_endpoints(namespace, NAME, "http")]


async def load(
    urls: Sequence[str] | None, cluster: LocalCluster, namespace: str, duration_s: float
) -> LoadReport:
    """RATE requests/s for ``duration_s``: to ``urls`` fixed, or to the pods ready now."""

    async def source() -> list[str]:
        if urls is not None:
            return list(urls)
        return await asyncio.to_thread(endpoints, cluster, namespace)

    return await run_load(source, steps((duration_s, RATE)), duration_s, model=NAME)


def failures(outcomes: Sequence[Outcome]) -> list[tuple[float, int, str]]:
    return [(round(o.sent_at, 1), o.status, o.endpoint) for o in outcomes if o.status != 200]


class Sampler:
    """The BatchedModel's status, sampled twice a second in a thread: (time, status)."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.samples: list[tuple[float, JSON]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic(), status(self.cluster, self.namespace)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def between(self, start: float, end: float) -> list[JSON]:
        return [s for t, s in self.samples if start <= t <= end]


# ------------------------------------------------------------------- the operator killed


@pytest.mark.timeout(150)
@pytest.mark.parametrize("fault", ["after-loop-write", "between-children"])
def test_the_operator_killed_mid_tick_converges_on_restart(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess, tmp_path: Path, fault: str
) -> None:
    """SIGKILL at a point of the tick where the loop's decision is in ``status.loop`` but not
    (or only partly) rendered: a new process renders it, once, and resumes the loop."""
    cluster.apply(model(replicas=1, min_replicas=1, scale_down_delay_s=600), "-n", namespace)
    marker = tmp_path / "fault.json"
    operator.start(
        entrypoint=[str(FAULTY)],
        env={"BATCHPILOT_FAULT": fault, "BATCHPILOT_FAULT_MARKER": str(marker)},
    )
    wait_for(marker.exists, timeout=90, what=f"the operator to reach the fault point {fault}",
             describe=lambda: operator.log()[-3000:])  # fmt: skip
    assert operator.kill() == -signal.SIGKILL

    # The window: the loop's decision (2 replicas, batch 24) is in status.loop; the
    # Deployment still runs 1 replica; the ConfigMap has it only past the ConfigMap write.
    killed = status(cluster, namespace)
    learnt = killed["loop"]
    assert (learnt["replicas"], learnt["maxBatchSize"]) == (2, 24), learnt
    assert deployment(cluster, namespace)["spec"]["replicas"] == 1
    written = configmap(cluster, namespace)
    if fault == "after-loop-write":
        assert (written["maxBatchSize"], written["generation"]) == (16, 1)
    else:
        assert (written["maxBatchSize"], written["generation"]) == (24, 2)
    assert (killed["tuned"]["replicas"], killed["tuned"]["configGeneration"]) == (1, 1)
    owned = children(cluster, namespace)
    assert {kind: len(uids) for kind, uids in owned.items()} == dict.fromkeys(owned, 1), owned

    # A new process (the real policy) converges on what the loop decided.
    operator.start()
    wait_model_ready(cluster, namespace, NAME, replicas=2, timeout=60)

    def in_force() -> JSON | None:
        st = status(cluster, namespace)
        return st if (st.get("configGeneration"), st.get("maxBatchSize")) == (2, 24) else None

    done = wait_for(in_force, timeout=45, what="generation 2 in force on every pod",
                    describe=lambda: json.dumps(status(cluster, namespace)))  # fmt: skip
    assert done["tuned"]["replicas"] == 2
    assert (done["tuned"]["maxBatchSize"], done["tuned"]["configGeneration"]) == (24, 2)
    assert deployment(cluster, namespace)["spec"]["replicas"] == 2
    config = configmap(cluster, namespace)
    assert (config["maxBatchSize"], config["generation"]) == (24, 2)  # none lost, none skipped
    # Every pod was told of the generation, the one started before it too: the mounted
    # file would otherwise change only at the node's next periodic sync.
    annotations = {
        p["metadata"]["name"]: p["metadata"]
        .get("annotations", {})
        .get(CONFIG_GENERATION_ANNOTATION)
        for p in pods(cluster, namespace)
    }
    assert set(annotations.values()) == {"2"}, annotations
    # No duplicate and nothing recreated: the same children, one ReplicaSet (no rollout).
    assert children(cluster, namespace) == owned
    # The loop resumed its memory from status.loop instead of starting afresh.
    resumed = status(cluster, namespace)["loop"]
    for key in ("lastScaleUp", "lastConfigChange", "fromSpec"):
        assert resumed.get(key) == learnt.get(key), (key, resumed, learnt)
    assert "outside the loop" not in operator.log()
    operator.stop()
    assert "Traceback" not in operator.log(), operator.log()[-4000:]


# ------------------------------------------------------------------- the API server restarted


@pytest.mark.timeout(240)
def test_an_api_server_restart_loses_no_request_and_recreates_nothing(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(model(replicas=2, min_replicas=2, scale_down_delay_s=600), "-n", namespace)
    operator.start()
    wait_model_ready(cluster, namespace, NAME, replicas=2, timeout=90)
    owned = children(cluster, namespace)
    before = {p["metadata"]["uid"]: restarts(p) for p in pods(cluster, namespace)}
    urls = endpoints(cluster, namespace)  # fixed: the API is away for a while
    assert len(urls) == 2

    async def scenario() -> tuple[LoadReport, float, float]:
        running = asyncio.create_task(load(urls, cluster, namespace, 30.0))
        await asyncio.sleep(5)
        began = time.monotonic()
        outage = await asyncio.to_thread(restart_api_server, cluster)
        return await running, began, outage

    started = time.monotonic()
    report, began, outage = asyncio.run(scenario())
    restarted_at = began + outage
    during = report.window(began - started, restarted_at - started)
    assert during, "no request was sent while the API server was down"
    assert not failures(report.outcomes), failures(report.outcomes)  # documented loss: none
    assert operator.alive, operator.log()[-4000:]

    # The operator reconnected: its watch sees a spec edit made now and renders it.
    generation = configmap(cluster, namespace)["generation"]
    cluster.kubectl(
        "patch", "bm", NAME, "-n", namespace, "--type=merge",
        "-p", '{"spec": {"batching": {"maxWaitMs": 7}}}',
    )  # fmt: skip
    wait_for(lambda: configmap(cluster, namespace)["maxWaitMs"] == 7.0, timeout=120,
             what="the spec edit rendered after the restart",
             describe=lambda: operator.log()[-3000:])  # fmt: skip
    assert configmap(cluster, namespace)["generation"] == generation + 1
    # ... and its loop ticks again.
    wall_restarted = time.time() - (time.monotonic() - restarted_at)
    wait_for(
        lambda: _decided_after(status(cluster, namespace), wall_restarted),
        timeout=30, what="a tuning decision after the restart",
    )  # fmt: skip
    wait_model_ready(cluster, namespace, NAME, replicas=2, timeout=30)
    # Nothing was recreated: the same children and pods, no container restarted.
    assert children(cluster, namespace) == owned
    assert {p["metadata"]["uid"]: restarts(p) for p in pods(cluster, namespace)} == before


def _decided_after(st: JSON, wall: float) -> bool:
    stamp = (st.get("lastDecision") or {}).get("time")
    if not stamp:
        return False
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() > wall


# --------------------------------------------------------------------- pods paused or killed


PAUSE_S = 18.0
"""Long enough for the scale-down delay to pass while paused, short of the liveness probe's
three failures ten seconds apart, which would restart the container."""
SCALE_DOWN_DELAY_S = 10


@pytest.mark.timeout(150)
def test_a_paused_pod_is_counted_missing_and_blocks_the_scale_down(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    # Two replicas where one would do: the loop scales down after the delay, unless a pod
    # does not answer.
    manifest = model(replicas=2, min_replicas=1, scale_down_delay_s=SCALE_DOWN_DELAY_S)
    cluster.apply(manifest, "-n", namespace)
    operator.start()
    wait_model_ready(cluster, namespace, NAME, replicas=2, timeout=90)
    paused_pod = sorted(pods(cluster, namespace), key=lambda p: str(p["metadata"]["name"]))[1]
    paused = paused_pod["metadata"]["name"]
    paused_url = f"http://{paused_pod['status']['podIP']}:8080"

    async def scenario(sampler: Sampler) -> tuple[LoadReport, float, float]:
        running = asyncio.create_task(load(None, cluster, namespace, PAUSE_S + 6))
        await asyncio.sleep(2)
        signal_pod(cluster, namespace, paused, signal.SIGSTOP)
        stopped = time.monotonic()
        await asyncio.sleep(PAUSE_S)
        signal_pod(cluster, namespace, paused, signal.SIGCONT)
        resumed = time.monotonic()
        return await running, stopped, resumed

    with Sampler(cluster, namespace) as sampler:
        report, stopped, resumed = asyncio.run(scenario(sampler))
        # Once it answers again, the data is whole and the scale-down comes (after a
        # scale-up, maybe: the paused pod's queue is answered in a burst, a backlog).
        wait_for(
            lambda: status(cluster, namespace).get("tuned", {}).get("replicas") == 1,
            timeout=90,
            what="the scale-down once the pod answers again",
            describe=lambda: json.dumps(status(cluster, namespace).get("lastDecision")),
        )

    during = sampler.between(stopped, resumed)
    story = "\n".join(
        f"{s.get('tuned', {}).get('replicas')} {s.get('requestsPerSecond')} "
        f"{(s.get('lastDecision') or {}).get('reason')}"
        for s in during
    )
    assert {s["tuned"]["replicas"] for s in during} == {2}, f"scaled down on partial data\n{story}"
    reasons = [(s.get("lastDecision") or {}).get("reason") or "" for s in during]
    unobserved = Note.of(Rule.PODS_UNOBSERVED, missing=1, expected=2).text()
    blocked = Note.of(Rule.DOWN_BLOCKED, need=1, why="pods are unobserved").text()
    assert any(unobserved in r for r in reasons), story
    assert any(blocked in r for r in reasons), story
    # Its load is assumed like the other's, never zero: the rate stays the offered one, not
    # the half the answering pod saw.
    rates = [
        s["requestsPerSecond"]
        for s, r in zip(during, reasons, strict=True)
        if unobserved in r and s.get("requestsPerSecond") is not None
    ]
    assert rates, story
    assert statistics.median(rates) > 0.75 * RATE, story
    # The pod that answered lost nothing (a request caught mid-exchange by the stop may
    # fail on the paused one).
    lost = [f for f in failures(report.outcomes) if f[2] != paused_url]
    assert not lost, lost


@pytest.mark.timeout(150)
def test_a_pod_killed_under_load_is_restarted_and_the_other_loses_nothing(
    cluster: LocalCluster, namespace: str, operator: OperatorProcess
) -> None:
    cluster.apply(model(replicas=2, min_replicas=2, scale_down_delay_s=600), "-n", namespace)
    operator.start()
    wait_model_ready(cluster, namespace, NAME, replicas=2, timeout=90)
    by_name = {p["metadata"]["name"]: p for p in pods(cluster, namespace)}
    victim, survivor = sorted(by_name)
    address = {n: f"http://{p['status']['podIP']}:8080" for n, p in by_name.items()}

    async def scenario() -> tuple[LoadReport, float]:
        running = asyncio.create_task(load(None, cluster, namespace, 25.0))
        await asyncio.sleep(4)
        signal_pod(cluster, namespace, victim, signal.SIGKILL)
        killed = time.monotonic()
        return await running, killed

    started = time.monotonic()
    report, killed = asyncio.run(scenario())
    lost = failures(report.outcomes)
    assert all(endpoint == address[victim] for _, _, endpoint in lost), lost
    survivor_outcomes = [o for o in report.outcomes if o.endpoint == address[survivor]]
    assert survivor_outcomes
    assert all(o.status == 200 for o in survivor_outcomes)
    # The killed pod came back (the node agent restarted its container) and served again.
    back = [
        o
        for o in report.outcomes
        if o.endpoint == address[victim] and o.sent_at > killed - started and o.status == 200
    ]
    assert back, f"the killed pod served nothing afterwards; lost {lost}"
    wait_model_ready(cluster, namespace, NAME, replicas=2, timeout=30)
    now = {p["metadata"]["name"]: p for p in pods(cluster, namespace)}
    assert restarts(now[victim]) == 1
    assert restarts(now[survivor]) == 0
