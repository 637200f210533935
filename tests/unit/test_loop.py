"""The tuning loop's glue: pods to targets, observation to status, decisions written to
status and rendered by the reconcile, Events and the config's propagation. Kubernetes is a
fake here (the cluster and e2e layers run the loop against the real API server); metrics are
written by prometheus_client."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from fakepods import FakePod, scrape_of

from batchpilot_contract.batching import BatchingConfig
from batchpilot_operator import api
from batchpilot_operator.api import BatchedModel, TunedState
from batchpilot_operator.loop import (
    TuningLoop,
    decision_event,
    pod_templates,
    ready_pod_targets,
)
from batchpilot_operator.loopstatus import in_force_config, observation_status
from batchpilot_operator.metrics import Scrape, observe
from batchpilot_operator.ownership import state_to_render
from batchpilot_operator.policy import CurrentState, Decision, Rule
from batchpilot_operator.policy.rules import Note
from policystubs import stub_decision


def pod(name: str, ip: str | None = "127.0.0.9", ready: bool = True, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, **meta},
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_targets_are_the_ready_pods_with_an_address() -> None:
    pods = [
        pod("a", "127.0.0.2"),
        pod("b", "127.0.0.3", ready=False),
        pod("c", None),
        pod("d", "127.0.0.5", deletionTimestamp="2026-01-01T00:00:00Z"),
        pod("e", "fd00::5"),
    ]
    assert ready_pod_targets(pods) == {
        "a": "http://127.0.0.2:8080/metrics",
        "e": "http://[fd00::5]:8080/metrics",
    }


def test_templates_are_those_of_the_pods_not_being_deleted() -> None:
    pods = [
        pod("a", labels={"pod-template-hash": "new"}),
        pod("b", labels={"pod-template-hash": "old"}, deletionTimestamp="2026-01-01T00:00:00Z"),
        pod("c"),
    ]
    assert pod_templates(pods) == {"new"}


def body(**autoscaling: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{api.GROUP}/{api.VERSION}",
        "kind": api.KIND,
        "metadata": {"name": "m", "namespace": "ns", "generation": 1, "uid": "u1"},
        "spec": {
            "model": {"uri": "hf://org/m", "task": "embedding"},
            "replicas": 1,
            "batching": {"maxBatchSize": 8, "maxWaitMs": 5},
            "autoscaling": {
                "enabled": True,
                "minReplicas": 1,
                "maxReplicas": 4,
                "latencyTargetMs": 100,
                "intervalSeconds": 5,
                **autoscaling,
            },
        },
    }


def test_in_force_is_the_oldest_generation_the_pods_report() -> None:
    bm = BatchedModel.from_body(body())
    pods = {"a": FakePod(16, 0.004, gen=3), "b": FakePod(8, 0.005, gen=2)}
    obs = observe(None, scrape_of(1.0, pods))
    config = in_force_config(obs, bm.spec)
    assert config is not None
    assert (config.max_batch_size, config.max_wait_ms, config.generation) == (8, 5.0, 2)
    assert config.max_queue == bm.spec.batching.max_queue
    assert in_force_config(observe(None, Scrape(time=1.0, samples={})), bm.spec) is None


def test_observation_status_only_for_a_window_that_covers_pods() -> None:
    pods = {"a": FakePod(), "b": FakePod()}
    first = scrape_of(0.0, pods)
    assert observation_status(observe(None, first)) == {}
    for p in pods.values():
        p.serve(100, latency_s=0.03, batch_size=4, batch_s=0.02)
    pods["a"].queue.set(3)
    # b does not answer: its share of the load is assumed like a's
    second = Scrape(
        time=10.0, samples=scrape_of(10.0, {"a": pods["a"]}).samples, missing={"b": "x"}
    )
    status = observation_status(observe(first, second))
    assert status == {
        "requestsPerSecond": pytest.approx(2 * 103 / 10, abs=0.05),
        "queueDepth": 3.0,
        "avgBatchSize": 4.0,
        "p95LatencyMs": pytest.approx(48.8, abs=0.1),
    }


def decision(replicas: int, size: int, wait: float, *notes: Note) -> Decision:
    return stub_decision("x", replicas, size, wait, replicas != 2, (size, wait) != (8, 5.0), *notes)


made = stub_decision


def test_decision_events_name_what_changed_and_why() -> None:
    before = CurrentState(replicas=2, max_batch_size=8, max_wait_ms=5.0, generation=1)
    assert decision_event(before, decision(2, 8, 5.0)) is None
    up = decision_event(before, decision(3, 16, 5.0, Note.of(Rule.SCALE_UP, replicas=3)))
    assert up is not None
    assert (up.reason, up.message) == (
        "ScaledUp",
        "replicas 2->3, maxBatchSize 8->16: scale up to 3",
    )
    down = decision_event(before, decision(1, 8, 5.0))
    assert down is not None
    assert down.reason == "ScaledDown"
    retune = decision_event(before, decision(2, 8, 2.5, Note.of(Rule.WAIT_SET, wait=2.5)))
    assert retune is not None
    assert (retune.reason, retune.message) == ("Retuned", "maxWaitMs 5->2.5: wait 2.5 ms")


# ------------------------------------------------------------------ the loop, on a fake API


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386), as the API server applies it."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_patch(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_patch({}, value)
        else:
            out[key] = value
    return out


@dataclass
class FakeKube:
    """A BatchedModel and its pods, with a resourceVersion that every write moves on.
    ``reconcile`` does what the reconciler does to the tuned state: render it from spec and
    status, settle the generation against the ConfigMap, record it in ``status.tuned``."""

    body: dict[str, Any]
    pods: dict[str, FakePod]
    configmap: BatchingConfig | None = None
    status: dict[str, Any] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)
    templates: dict[str, str] = field(default_factory=dict)
    """Pod name -> its ``pod-template-hash`` label (none when absent)."""
    touched: list[tuple[list[str], int]] = field(default_factory=list)
    writes: list[dict[str, Any]] = field(default_factory=list)
    """The loop's status writes that were accepted."""
    conflicts: int = 0
    gone: bool = False
    version: int = 1
    before_write: Callable[[], None] | None = None
    """Runs once, between the loop's read and its status write."""

    def bm(self) -> BatchedModel:
        meta = {**self.body["metadata"], "resourceVersion": str(self.version)}
        return BatchedModel.from_body({**self.body, "metadata": meta, "status": self.status})

    def edit_spec(self, **fields: Any) -> None:
        """A spec edit (``kubectl scale``, ``kubectl patch``): a new generation."""
        self.body["spec"] = merge_patch(self.body["spec"], fields)
        self.body["metadata"]["generation"] += 1
        self.version += 1

    def read(self, namespace: str, name: str) -> BatchedModel | None:
        return None if self.gone else self.bm()

    def list_pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        def labels(p: str) -> dict[str, Any]:
            if p not in self.templates:
                return {}
            return {"labels": {"pod-template-hash": self.templates[p]}}

        return [
            pod(p, f"127.0.0.{i + 2}", ready=p not in self.starting, **labels(p))
            for i, p in enumerate(sorted(self.pods))
        ]

    def patch_status(
        self, namespace: str, name: str, fields: Mapping[str, Any], resource_version: str | None
    ) -> bool:
        if self.before_write is not None:
            edit, self.before_write = self.before_write, None
            edit()
        if self.gone:
            return False
        if resource_version != str(self.version):
            self.conflicts += 1
            return False
        self.status = merge_patch(self.status, fields)
        self.version += 1
        self.writes.append(dict(fields))
        return True

    def reconcile(self, namespace: str, name: str) -> TunedState | None:
        if self.gone:
            return None
        bm = self.bm()
        state = api.settle_generation(state_to_render(bm), bm.spec, self.configmap)
        self.configmap = state.batching_config(bm.spec)
        self.status = {**self.status, "tuned": state.to_status()}
        self.version += 1
        return state

    def touch_pods(self, namespace: str, pods: list[str], generation: int) -> None:
        self.touched.append((pods, generation))
        assert self.configmap is not None
        for p in pods:  # the kubelet syncs the pod, the runtime reloads the file
            c = self.configmap
            self.pods[p].load_config(c.max_batch_size, c.max_wait_s, c.generation)


class Clock:
    """A monotonic clock at ``now``, and the wall clock ``offset`` ahead of it."""

    def __init__(self, now: float = 1000.0, offset: float = 1_767_225_600.0) -> None:
        self.now = now
        self.offset = offset

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.offset


def loop_for(kube: FakeKube, clock: Clock, **kw: Any) -> TuningLoop:
    async def scrape(targets: Mapping[str, str]) -> Scrape:
        return scrape_of(clock(), {p: kube.pods[p] for p in targets})

    return TuningLoop("ns", "m", kube, scrape=scrape, clock=clock, wall_clock=clock.wall, **kw)


def started(kube: FakeKube) -> None:
    """The reconciler has written generation 1 and the pods run it."""
    bm = kube.bm()
    state = api.settle_generation(api.resolve_state(bm.spec, None), bm.spec, None)
    kube.configmap = state.batching_config(bm.spec)
    kube.status = {"tuned": state.to_status()}
    for p in kube.pods.values():
        p.load_config(state.max_batch_size, state.max_wait_ms / 1000, state.config_generation)


async def test_first_tick_takes_a_baseline_and_holds() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    result = await loop_for(kube, Clock()).tick()
    assert result is not None
    assert result.decision is not None
    assert result.decision.action == "hold"
    assert result.events == []
    assert result.interval_s == 5.0
    (last,) = kube.writes  # one status write per tick
    assert last["configGeneration"] == 1  # the config written, until a pod reports one
    assert last["lastDecision"]["action"] == "hold"
    assert last["lastDecision"]["neededReplicas"] is None  # no window: nothing sized
    assert "requestsPerSecond" not in last  # no window yet
    assert kube.status["loop"]["replicas"] == 1  # the loop's state, with the knobs it set
    assert kube.touched == []


async def test_a_growing_queue_scales_up_with_an_event_and_status() -> None:
    kube = FakeKube(body(), {"m-a": FakePod(8, 0.005)})
    started(kube)
    clock = Clock()
    loop = loop_for(kube, clock)
    await loop.tick()
    clock.now += 5.0
    a = kube.pods["m-a"]
    a.serve(400, latency_s=0.4, batch_size=8, batch_s=0.05)  # 80/s, slow
    a.queue.set(200)
    result = await loop.tick()
    assert result is not None
    assert result.decision is not None
    assert result.decision.replicas > 1
    assert kube.status["tuned"]["replicas"] == result.decision.replicas
    assert kube.status["lastDecision"]["action"].startswith("scale-up")
    assert kube.status["lastDecision"]["neededReplicas"] == result.decision.replicas
    assert kube.status["requestsPerSecond"] == pytest.approx(120.0, abs=0.1)  # 80 + 200/5
    assert kube.status["queueDepth"] == 200.0
    assert [e.reason for e in result.events][:1] == ["ScaledUp"]
    assert loop.state is not None
    assert loop.state.memory.last_scale_up == clock.now  # the policy's memory for the next tick
    assert kube.status["loop"]["replicas"] == result.decision.replicas
    assert kube.status["loop"]["lastScaleUp"] == "2026-01-01T00:16:45.000Z"  # wall clock


async def test_a_config_change_touches_the_pods_and_measures_propagation() -> None:
    kube = FakeKube(body(), {"m-a": FakePod(), "m-b": FakePod()})
    started(kube)
    clock = Clock()
    loop = loop_for(kube, clock)
    retune = made("retune", 1, 16, 2.0, False, True)
    loop.policy = lambda *_: retune
    result = await loop.tick()
    assert result is not None
    assert kube.configmap is not None
    assert (kube.configmap.max_batch_size, kube.configmap.max_wait_ms) == (16, 2.0)
    assert kube.configmap.generation == 2
    assert kube.touched == [(["m-a", "m-b"], 2)]
    assert result.propagation_s is not None
    assert [e.reason for e in result.events] == ["Retuned", "ConfigInForce"]
    assert "generation 2 in force on 2 pod(s)" in result.events[1].message
    assert loop.pending is None


async def test_a_config_change_reaches_pods_still_starting() -> None:
    kube = FakeKube(body(), {"m-a": FakePod(), "m-b": FakePod()}, starting={"m-b"})
    started(kube)
    kube.pods["m-b"].load_config(32, 0.005, 1)
    loop = loop_for(kube, Clock())
    loop.policy = lambda *_: made("retune", 2, 16, 2.0, False, True)
    result = await loop.tick()
    assert result is not None
    # m-b mounted generation 1 when it was created; it must not serve it once ready
    assert kube.touched == [(["m-a", "m-b"], 2)]
    assert "in force on 1 pod(s)" in result.events[-1].message  # only the ready one counted


async def test_pods_being_deleted_are_not_touched() -> None:
    kube = FakeKube(body(), {"m-a": FakePod(), "m-b": FakePod()})
    started(kube)
    kube.list_pods = lambda ns, name: [  # type: ignore[method-assign]
        pod("m-a", "127.0.0.2"),
        pod("m-b", "127.0.0.3", deletionTimestamp="2026-01-01T00:00:00Z"),
    ]
    loop = loop_for(kube, Clock())
    loop.policy = lambda *_: made("retune", 1, 16, 2.0, False, True)
    await loop.tick()
    assert kube.touched == [(["m-a"], 2)]


async def test_a_generation_rendered_without_a_touch_is_announced_by_the_next_process() -> None:
    """An operator killed after its reconcile wrote generation 2 and before it touched the
    pods: the next process's loop finds them reporting 1 and touches them, once."""
    kube = FakeKube(body(), {"m-a": FakePod(), "m-b": FakePod()})
    started(kube)
    clock = Clock()
    killed = loop_for(kube, clock)
    killed.policy = lambda *_: made("retune", 1, 16, 2.0, False, True)

    def die(namespace: str, pods: list[str], generation: int) -> None:
        raise KeyboardInterrupt("killed before the touch")

    touch, kube.touch_pods = kube.touch_pods, die  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        await killed.tick()
    kube.touch_pods = touch  # type: ignore[method-assign]
    assert kube.configmap is not None
    assert kube.configmap.generation == 2
    assert {p.generation._value.get() for p in kube.pods.values()} == {1}  # not reloaded

    resumed = loop_for(kube, clock)  # a new process: its first tick holds (a baseline)
    result = await resumed.tick()
    assert result is not None
    assert result.decision is not None
    assert result.decision.action == "hold"
    assert kube.touched == [(["m-a", "m-b"], 2)]
    assert [e.reason for e in result.events] == ["ConfigInForce"]
    clock.now += 5.0
    await resumed.tick()
    assert kube.touched == [(["m-a", "m-b"], 2)]  # once: the pods report it now


async def test_propagation_not_seen_within_the_tick_is_reported_by_a_later_one() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    kube.touch_pods = lambda ns, pods, gen: kube.touched.append((pods, gen))  # type: ignore[method-assign]
    loop = TuningLoop(
        "ns",
        "m",
        kube,
        scrape=lambda targets: _scrape_now(kube, targets),
        propagation_timeout_s=0.6,
    )
    retune = made("retune", 1, 4, 5.0, False, True)
    loop.policy = lambda *_: retune
    result = await loop.tick()
    assert result is not None
    assert result.propagation_s is None
    assert loop.pending is not None
    kube.pods["m-a"].load_config(4, 0.005, 2)  # the periodic kubelet sync got there
    loop.policy = lambda *_: replace(retune, config_changed=False, action="hold")
    later = await loop.tick()
    assert later is not None
    assert later.propagation_s is not None
    assert "ConfigInForce" in [e.reason for e in later.events]


async def _scrape_now(kube: FakeKube, targets: Mapping[str, str]) -> Scrape:
    return scrape_of(time.monotonic(), {p: kube.pods[p] for p in targets})


async def test_a_spec_edit_between_the_read_and_the_write_wins() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    kube.before_write = lambda: kube.edit_spec(replicas=3)  # kubectl scale bm/m --replicas=3
    clock = Clock()
    loop = loop_for(kube, clock)
    loop.policy = lambda *_: made("scale-up", 2, 8, 5.0, True, False)
    result = await loop.tick()
    assert result is not None
    assert result.conflict  # refused on the resourceVersion, and not retried
    assert (kube.conflicts, kube.writes) == (1, [])
    assert loop.state is None
    assert "loop" not in kube.status
    assert kube.reconcile("ns", "m") == TunedState(3, 8, 5.0, 1)  # the edit's own reconcile
    seen: list[CurrentState] = []

    def hold(_obs: Any, cur: CurrentState, *_: Any) -> Decision:
        seen.append(cur)
        return made("hold", cur.replicas, 8, 5.0, False, False)

    loop.policy = hold
    clock.now += 5.0
    await loop.tick()
    assert seen[0].replicas == 3  # the next decision starts from the edit
    assert kube.status["loop"]["replicas"] == 3


async def test_a_status_write_between_the_read_and_the_write_is_retried() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)

    def reconciled() -> None:  # the reconciler wrote a condition: the decision stands
        kube.status = {**kube.status, "conditions": []}
        kube.version += 1

    kube.before_write = reconciled
    loop = loop_for(kube, Clock())
    loop.policy = lambda *_: made("scale-up", 2, 8, 5.0, True, False)
    result = await loop.tick()
    assert result is not None
    assert not result.conflict
    assert (kube.conflicts, len(kube.writes)) == (1, 1)
    assert kube.status["tuned"]["replicas"] == 2


async def test_a_deleted_model_ends_the_loop() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()}, gone=True)
    assert await loop_for(kube, Clock()).tick() is None


async def test_decisions_stay_within_edited_bounds() -> None:
    kube = FakeKube(body(maxReplicas=2), {"m-a": FakePod(8, 0.005)})
    started(kube)
    clock = Clock()
    loop = loop_for(kube, clock)
    await loop.tick()
    clock.now += 5.0
    kube.pods["m-a"].serve(2000, latency_s=0.9, batch_size=8, batch_s=0.05)
    kube.pods["m-a"].queue.set(1000)
    result = await loop.tick()
    assert result is not None
    assert result.decision is not None
    assert result.decision.replicas == 2
    assert kube.status["tuned"]["replicas"] == 2


async def test_a_change_made_outside_the_loop_restarts_its_memory() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    clock = Clock()
    loop = loop_for(kube, clock)
    await loop.tick()
    assert loop.state is not None
    memory = replace(loop.state.memory, recommendations=((clock.now, 1),), last_scale_up=1.0)
    loop.state = replace(loop.state, memory=memory)
    kube.edit_spec(replicas=3)  # kubectl scale bm/m --replicas=3
    bm = kube.bm()
    running = state_to_render(bm)
    current = loop.resume(bm, running).current(running)
    assert current.replicas == 3
    assert current.recommendations == ()  # the scale-down delay counts from now
    assert current.last_scale_up is None


async def test_a_finished_rollout_to_a_new_template_restarts_the_service_history() -> None:
    kube = FakeKube(body(), {"m-a": FakePod(), "m-b": FakePod()})
    kube.templates = {"m-a": "v1", "m-b": "v1"}
    started(kube)
    clock = Clock()
    loop = loop_for(kube, clock)
    loop.policy = lambda _obs, cur, *_: made(
        "hold", cur.replicas, cur.max_batch_size, cur.max_wait_ms, False, False
    )

    async def window(batch_s: float) -> None:
        clock.now += 5.0
        for p in kube.pods.values():
            p.serve(80, latency_s=2 * batch_s, batch_size=8, batch_s=batch_s)
        await loop.tick()

    await loop.tick()
    for _ in range(3):
        await window(0.05)
    assert len(loop.history) == 6  # two pods, three windows
    kube.templates = {"m-a": "v1", "m-b": "v2"}  # the rollout: both serve
    await window(0.05)
    assert len(loop.history) == 8
    kube.templates = {"m-a": "v2", "m-b": "v2"}  # done: the new image is twice as fast
    await window(0.025)
    durations = {round(p.duration_s, 4) for p in loop.history.points()}
    assert durations == {0.025}
    assert len(loop.history) == 2
    await window(0.025)
    assert len(loop.history) == 4  # the same template again: kept


async def test_a_new_loop_resumes_the_state_an_earlier_one_wrote() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    clock = Clock()
    seen: list[CurrentState] = []

    def learnt(_obs: Any, cur: CurrentState, now: float, *_: Any) -> Decision:
        seen.append(cur)
        return made(
            *("scale-up", 2, cur.max_batch_size, cur.max_wait_ms, True, False),
            recommendations=((now - 15.0, 1), (now - 10.0, 1), (now - 5.0, 1), (now, 2)),
            utilization_target=0.8,
            last_overload=now,
            scale_down_delay_s=240.0,
        )

    first = loop_for(kube, clock)
    first.policy = lambda obs, cur, spec, now: learnt(obs, cur, now)
    await first.tick()
    loop = kube.status["loop"]
    assert (loop["utilizationTarget"], loop["scaleDownDelaySeconds"]) == (0.8, 240.0)
    assert (loop["replicas"], loop["fromSpec"]["replicas"]) == (2, 1)
    assert (seen[0].utilization_target, seen[0].scale_down_delay_s) == (None, None)

    # A new operator process, started later on a monotonic clock of its own: no memory but
    # the status.
    later = Clock(now=50.0, offset=clock.offset + (clock.now + 7.0) - 50.0)
    restarted = loop_for(kube, later)
    restarted.policy = lambda obs, cur, spec, now: learnt(obs, cur, now)
    await restarted.tick()
    resumed = seen[1]
    assert (resumed.replicas, resumed.generation) == (2, 1)
    assert (resumed.utilization_target, resumed.scale_down_delay_s) == (0.8, 240.0)
    assert resumed.last_scale_up == pytest.approx(50.0 - 7.0)  # 7 s ago, on the new clock
    assert resumed.last_overload == pytest.approx(50.0 - 7.0)
    # the run of 1s kept as its first and last: the same highest need in any window
    assert [(round(t, 3), r) for t, r in resumed.recommendations] == [(28, 1), (38, 1), (43, 2)]
    assert resumed.last_scale_down is None


async def test_a_new_loop_resumes_the_headroom_and_delay_an_earlier_one_learnt() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    clock = Clock()
    seen: list[CurrentState] = []

    def learnt(_obs: Any, cur: CurrentState, *_: Any) -> Decision:
        seen.append(cur)
        return made(
            "hold",
            cur.replicas,
            cur.max_batch_size,
            cur.max_wait_ms,
            False,
            False,
            utilization_target=0.8,
            scale_down_delay_s=240.0,
        )

    first = loop_for(kube, clock)
    first.policy = learnt
    await first.tick()
    loop = kube.status["loop"]
    assert (loop["utilizationTarget"], loop["scaleDownDelaySeconds"]) == (0.8, 240.0)
    assert (seen[0].utilization_target, seen[0].scale_down_delay_s) == (None, None)

    restarted = loop_for(kube, clock)  # a new operator process: no memory but the status
    restarted.policy = learnt
    await restarted.tick()
    assert (seen[1].utilization_target, seen[1].scale_down_delay_s) == (0.8, 240.0)
    assert (seen[1].replicas, seen[1].generation) == (1, 1)


async def test_a_change_made_outside_the_loop_does_not_resume_the_old_memory() -> None:
    kube = FakeKube(body(), {"m-a": FakePod()})
    started(kube)
    kube.status["loop"] = {"utilizationTarget": 0.8, "scaleDownDelaySeconds": 240.0}
    seen: list[CurrentState] = []

    def hold(_obs: Any, cur: CurrentState, *_: Any) -> Decision:
        seen.append(cur)  # and carries the memory over, as the policy's holds do
        return made(
            "hold",
            cur.replicas,
            cur.max_batch_size,
            cur.max_wait_ms,
            False,
            False,
            utilization_target=cur.utilization_target,
            scale_down_delay_s=cur.scale_down_delay_s,
        )

    loop = loop_for(kube, Clock())
    loop.policy = hold
    await loop.tick()
    assert seen[-1].utilization_target == 0.8
    loop_status = kube.status["loop"]
    assert (loop_status["utilizationTarget"], loop_status["scaleDownDelaySeconds"]) == (0.8, 240.0)
    kube.edit_spec(replicas=3)  # kubectl scale
    await loop.tick()
    assert seen[-1].replicas == 3
    assert seen[-1].utilization_target is None
