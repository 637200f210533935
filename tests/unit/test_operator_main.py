"""``batchpilot-operator``'s start-up: the scope and the kopf settings it hands to kopf."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from batchpilot_operator import __main__ as cli


def started(monkeypatch: pytest.MonkeyPatch, *argv: str) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setattr(kopf, "run", lambda **kwargs: runs.append(kwargs))
    monkeypatch.delenv("BATCHPILOT_WATCH_NAMESPACES", raising=False)
    cli.main(list(argv))
    (run,) = runs
    return run


def test_no_cluster_scan_turns_off_kopfs_crd_and_namespace_watch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = started(monkeypatch, "-n", "models", "--no-cluster-scan", "--standalone")
    assert run["namespaces"] == ["models"]
    assert run["clusterwide"] is False
    assert run["settings"].scanning.disabled is True


def test_scanning_stays_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    run = started(monkeypatch, "--all-namespaces")
    assert run["clusterwide"] is True
    assert run["settings"].scanning.disabled is False
