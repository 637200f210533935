"""Shared pytest configuration: every test gets its layer's marker from its folder, and the
cluster and e2e layers share the local cluster fixtures (created only when a test asks).

- `cluster` (session): a LocalCluster that is up. It reuses a running cluster (`make cluster`)
  or starts one, and stops at the end of the session only a cluster it started (and only when
  no other test session still uses it; BATCHPILOT_KEEP_CLUSTER=1 keeps it running).
  `.kubeconfig`, `.bin`, `.kubectl(*args, check=True, input=None)`, `.helm(*args)`,
  `.api` (JSON client), `.apply(manifest)`, `.get_json(*args)`, `.pod_log(ns, pod)`.
- `namespace` (function): a fresh namespace whose default ServiceAccount exists; deleted
  afterwards without waiting for its finalizers.

Missing binaries fail the test (never skip) with the command that builds them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from batchpilot_localcluster.cluster import BinariesMissingError, LocalCluster
from batchpilot_localcluster.clusteraccess import ClusterError

LAYERS = ("unit", "model", "cluster", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the layer named by its top folder under tests/."""
    root = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(root).parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster()
    problem = ""
    try:
        local.check_binaries()
        session = local.session()
        session.__enter__()
    except BinariesMissingError as error:
        problem = str(error)
    except (ClusterError, TimeoutError) as error:
        problem = f"the local cluster did not start: {error}"
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield local
    finally:
        session.__exit__(None, None, None)


@pytest.fixture
def namespace(cluster: LocalCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    name = cluster.create_namespace(request.node.name)
    try:
        yield name
    finally:
        cluster.delete_namespace(name)
