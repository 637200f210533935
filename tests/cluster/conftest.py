"""Fixtures for tests against the local control plane.

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

import pytest

from batchpilot_localcluster.cluster import BinariesMissingError, ClusterError, LocalCluster


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
