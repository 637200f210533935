"""The operator's API clients share one connection pool, sized for its worker threads."""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes
import pytest

from batchpilot_operator import kube


@pytest.fixture
def loaded_configuration() -> Iterator[None]:
    """A default configuration as a loaded kubeconfig leaves it (restored afterwards)."""
    before = kubernetes.client.Configuration.get_default_copy()
    configuration = kubernetes.client.Configuration(host="https://127.0.0.1:6443")
    configuration.api_key = {"authorization": "Bearer t"}
    kubernetes.client.Configuration.set_default(configuration)
    yield
    kubernetes.client.Configuration.set_default(before)


@pytest.mark.usefixtures("loaded_configuration")
def test_the_pool_keeps_the_loaded_server_and_credentials() -> None:
    pooled = kube.pooled_configuration()
    assert pooled.connection_pool_maxsize == kube.API_CONNECTIONS
    assert (
        pooled.connection_pool_maxsize > kubernetes.client.Configuration().connection_pool_maxsize
    )
    assert pooled.host == "https://127.0.0.1:6443"
    assert pooled.api_key == {"authorization": "Bearer t"}
    client = kube.Clients(kubernetes.client.ApiClient(pooled))
    pool = client.core.api_client.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == kube.API_CONNECTIONS
