"""The emulated accelerator: shipped profiles, timing on virtual time, outputs, the app around
it, and that serving it never imports torch."""

from __future__ import annotations

import asyncio
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: bench/

from bench.loop.simulator import run_virtual
from fakeruntime import serve, until_ready

from batchpilot_contract.batching import BatchingConfig
from batchpilot_runtime import __main__ as runtime_main
from batchpilot_runtime.app import create_app
from batchpilot_runtime.backends import CLASSIFICATION_KIND, embedding_kind
from batchpilot_runtime.backends.emulated import (
    EmulatedModel,
    Profile,
    ProfileError,
    Spread,
    load_emulated,
    load_profile,
    profile_names,
)
from batchpilot_runtime.batcher import Batch, Batcher
from batchpilot_runtime.settings import Settings


def profile(**overrides: Any) -> Profile:
    document: dict[str, Any] = {
        "accelerator": "a test device",
        "provenance": "made up for a test",
        "measured": False,
        "base_ms": 10.0,
        "per_item_ms": 2.0,
        "load_seconds": 0.0,
        "dimensions": 8,
        "labels": ["a", "b", "c"],
    }
    document.update(overrides)
    return Profile.from_json("test", document)


def test_every_shipped_profile_loads_and_says_where_it_comes_from() -> None:
    names = profile_names()
    assert {"minilm-l6-cpu", "minilm-l6-datacenter-gpu", "bert-large-l4"} <= set(names)
    for name in names:
        loaded = load_profile(f"emulated://{name}")
        assert loaded.name == name
        assert loaded.accelerator
        assert loaded.provenance
        assert loaded.batch_seconds(2) > loaded.batch_seconds(1) > 0
    measured = load_profile("minilm-l6-cpu")
    assert measured.measured
    assert len(measured.spread.ratios) > 1000
    assert not load_profile("bert-large-l4").measured
    assert load_profile("bert-large-l4").max_batch == 64


def test_an_unknown_profile_is_refused_with_the_shipped_names() -> None:
    with pytest.raises(ProfileError, match=r"emulated://nope: no such profile.*bert-large-l4"):
        load_profile("emulated://nope")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_ms": None}, "base_ms"),
        ({"per_item_ms": 0}, "per_item_ms must be > 0"),
        ({"max_batch": 0}, "max_batch must be >= 1"),
        ({"labels": []}, "labels must not be empty"),
        ({"spread": {"correlation": 1.0}}, r"spread.correlation must be in \[0, 1\)"),
        ({"spread": {"ratios": [1.0, -1.0]}}, "spread.ratios must be > 0"),
    ],
)
def test_a_bad_profile_names_its_problem(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        profile(**overrides)


def test_a_profile_without_a_required_key_names_it() -> None:
    with pytest.raises(ProfileError, match="missing key 'provenance'"):
        Profile.from_json("x", {"accelerator": "a"})


def test_a_batch_holds_the_device_for_t_of_b_and_batches_queue_for_it() -> None:
    model = EmulatedModel(profile(), "embedding")

    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await model.run(Batch(embedding_kind(True), ["x"] * 5))  # 10 + 2*5 ms
        one = loop.time() - start
        start = loop.time()
        await asyncio.gather(
            model.run(Batch(embedding_kind(True), ["x"] * 5)),
            model.run(Batch(embedding_kind(True), ["y"] * 10)),  # 30 ms, after the first
        )
        return one, loop.time() - start

    one, both = run_virtual(main())
    assert one == pytest.approx(0.020)
    assert both == pytest.approx(0.050)


def test_warm_up_takes_the_model_load_time() -> None:
    model = EmulatedModel(profile(load_seconds=7.5), "embedding")

    async def main() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await model.warm_up()
        return loop.time() - start

    assert run_virtual(main()) == pytest.approx(7.5)


def test_the_memory_cap_bounds_the_batches_the_batcher_forms() -> None:
    model = EmulatedModel(profile(max_batch=4), "embedding")
    assert model.max_batch_cap == 4

    async def main() -> list[int]:
        sizes: list[int] = []
        run = model.run

        async def counting(batch: Batch) -> Any:
            sizes.append(len(batch.payloads))
            return await run(batch)

        model.run = counting  # type: ignore[method-assign]
        batcher = Batcher(model, BatchingConfig(), max_batch_cap=model.max_batch_cap)
        batcher.start()
        futures = batcher.submit_many(embedding_kind(True), [f"t{i}" for i in range(30)])
        await asyncio.gather(*futures)
        await batcher.aclose()
        return sizes

    sizes = run_virtual(main())
    assert sum(sizes) == 30
    assert max(sizes) == 4


def test_outputs_are_deterministic_per_text_and_well_formed() -> None:
    embedder = EmulatedModel(profile(), "embedding")
    classifier = EmulatedModel(profile(), "classification")

    async def main() -> tuple[Any, Any, Any]:
        unit = await embedder.run(Batch(embedding_kind(True), ["a text", "another", "a text"]))
        raw = await embedder.run(Batch(embedding_kind(False), ["a text"]))
        labels = await classifier.run(Batch(CLASSIFICATION_KIND, ["a text", "other text"]))
        return unit, raw, labels

    unit, raw, labels = run_virtual(main())
    assert all(o.vector.shape == (8,) and o.vector.dtype == np.float32 for o in unit)
    assert np.allclose([np.linalg.norm(o.vector) for o in unit], 1.0)
    assert np.array_equal(unit[0].vector, unit[2].vector)
    assert not np.allclose(unit[0].vector, unit[1].vector)
    assert np.allclose(raw[0].vector / np.linalg.norm(raw[0].vector), unit[0].vector)
    assert unit[0].tokens == 4  # two words and the two special tokens
    assert all(o.scores.shape == (3,) and o.scores.sum() == pytest.approx(1.0) for o in labels)
    assert not np.allclose(labels[0].scores, labels[1].scores)


def test_a_recorded_spread_is_replayed_in_order() -> None:
    sampler = Spread(ratios=(1.0, 2.0, 3.0, 4.0)).sampler(random.Random(1))
    draws = [sampler.draw() for _ in range(8)]
    start = draws[0]
    assert draws == [((start - 1 + i) % 4) + 1 for i in range(8)]


def test_an_estimated_spread_has_the_stated_size_and_correlation() -> None:
    sampler = Spread(sigma=0.1, correlation=0.8).sampler(random.Random(3))
    logs = np.log([sampler.draw() for _ in range(20_000)])
    assert abs(float(np.median(logs))) < 0.02
    assert float(np.std(logs)) == pytest.approx(0.1, rel=0.1)
    assert float(np.corrcoef(logs[:-1], logs[1:])[0, 1]) == pytest.approx(0.8, abs=0.05)
    flat = [Spread().sampler(random.Random(0)).draw() for _ in range(3)]
    assert flat == [1.0, 1.0, 1.0]


async def test_the_app_says_plainly_that_the_device_is_emulated(tmp_path: Path) -> None:
    cfg = Settings(model="emulated://test", name="m", config=tmp_path / "b.json")
    model = EmulatedModel(profile(), "embedding")  # the shipped profiles take seconds to load
    async with serve(cfg, lambda: [model]) as (client, runtime):
        await until_ready(runtime)
        stats = (await client.get("/stats")).json()
        metrics = (await client.get("/metrics")).text
        answer = await client.post("/v1/embeddings", json={"input": ["hi", "there"]})
    assert stats["emulated"] == "test"
    assert stats["workers"][0]["device"] == "emulated:test"
    assert 'batchpilot_device_info{device="emulated:test",emulated="true"} 1.0' in metrics
    assert answer.status_code == 200
    assert [len(d["embedding"]) for d in answer.json()["data"]] == [8, 8]


async def test_the_app_is_not_ready_while_the_emulated_model_loads(tmp_path: Path) -> None:
    cfg = Settings(model="emulated://bert-large-l4", config=tmp_path / "b.json")
    async with serve(cfg, lambda: load_emulated(cfg.model, "embedding")) as (client, _):
        ready = await client.get("/v2/health/ready")
        refused = await client.post("/v1/embeddings", json={"input": "hi"})
    assert ready.status_code == 503
    assert refused.status_code == 503


def test_an_unknown_profile_stops_the_runtime_with_a_usage_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert runtime_main.main(["--model", "emulated://no-such-gpu"]) == 2
    assert "no such profile" in caplog.text


def test_serving_an_emulated_model_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "from batchpilot_runtime import __main__, app\n"
        "from batchpilot_runtime.backends.emulated import load_emulated\n"
        "load_emulated('emulated://bert-large-l4', 'classification')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False"


def test_create_app_accepts_the_emulated_loader(tmp_path: Path) -> None:
    cfg = Settings(model="emulated://bert-large-l4", config=tmp_path / "b.json")
    app = create_app(cfg, lambda: load_emulated(cfg.model, "embedding"))
    assert app.state.runtime.name == "bert-large-l4"
    assert math.isclose(load_profile(cfg.model).batch_seconds(10), 0.071)


def test_the_profiles_readme_states_each_profiles_numbers() -> None:
    folder = Path(__file__).resolve().parents[2] / "runtime" / "batchpilot_runtime" / "profiles"
    rows = {
        line.split("|")[1].strip(" `"): [cell.strip() for cell in line.split("|")[2:-1]]
        for line in (folder / "README.md").read_text().splitlines()
        if line.startswith("| `")
    }
    assert set(rows) == set(profile_names())
    for name, (_, line, cap, load, _) in rows.items():
        shipped = load_profile(name)
        assert line == f"{shipped.base_ms:.1f} + {shipped.per_item_ms:.3g} b", name
        assert cap == (str(shipped.max_batch) if shipped.max_batch else "none"), name
        assert load == f"{shipped.load_seconds:g} s", name
