"""Service account tokens for local pods (TokenRequest), and the kubeconfig that carries them.

A pod that runs under a service account gets `<pod dir>/kubeconfig` (env KUBECONFIG) with a
token bound to the pod, so what it may do is decided by real RBAC. KUBERNETES_SERVICE_HOST is
not set: clients fall back to the kubeconfig instead of in-cluster config.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from batchpilot_localcluster.kubeapi import KubeAPI

JSON = dict[str, Any]

#: Lifetime asked for the kubeconfig's token; it is renewed at 80 % of its lifetime.
KUBECONFIG_TOKEN_SECONDS = 24 * 3600
REFRESH_FRACTION = 0.8


class TokenCache:
    """Requests tokens bound to pods and reuses each until 80 % of its lifetime has passed."""

    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str, str, int], tuple[str, float]] = {}

    def token(self, pod: JSON, audience: str | None, expiration_seconds: int) -> str:
        meta, spec = pod["metadata"], pod.get("spec", {})
        account = spec.get("serviceAccountName") or "default"
        key = (meta["namespace"], account, meta["uid"], audience or "", expiration_seconds)
        now = time.time()
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and now < cached[1]:
                return cached[0]
        body: JSON = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [audience] if audience else [],
                "expirationSeconds": max(600, expiration_seconds),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        status = self.api.create(path, body)["status"]
        expires = datetime.fromisoformat(
            status["expirationTimestamp"].replace("Z", "+00:00")
        ).timestamp()
        refresh_at = now + (expires - now) * REFRESH_FRACTION
        with self._lock:
            self._tokens[key] = (status["token"], refresh_at)
        return str(status["token"])

    def forget(self, uid: str) -> None:
        with self._lock:
            for key in [k for k in self._tokens if k[2] == uid]:
                del self._tokens[key]


def uses_service_account(pod: JSON) -> bool:
    spec = pod.get("spec", {})
    return (
        bool(spec.get("serviceAccountName"))
        and spec.get("automountServiceAccountToken") is not False
    )


def render_kubeconfig(server: str, ca_pem: bytes | None, namespace: str, token: str) -> str:
    cluster: JSON = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "pod", "user": {"token": token}}],
        "contexts": [
            {"name": "pod", "context": {"cluster": "local", "user": "pod", "namespace": namespace}}
        ],
        "current-context": "pod",
    }
    return yaml.safe_dump(config, sort_keys=False)


def write_file_atomic(path: Path, content: str, mode: int = 0o600) -> bool:
    """Replace `path` with one rename; False when the content was already there."""
    if path.exists() and path.read_text() == content:
        return False
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return True


def sync_pod_kubeconfig(api: KubeAPI, tokens: TokenCache, pod: JSON, pod_dir: Path) -> Path | None:
    """Write (or refresh) the pod's kubeconfig; None when the pod has no service account."""
    if not uses_service_account(pod):
        return None
    token = tokens.token(pod, None, KUBECONFIG_TOKEN_SECONDS)
    content = render_kubeconfig(
        api.server, api.credentials.ca_pem, pod["metadata"]["namespace"], token
    )
    path = pod_dir / "kubeconfig"
    write_file_atomic(path, content)
    return path
