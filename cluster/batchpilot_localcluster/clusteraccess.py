"""ClusterAccess: a local cluster's command-line tools, its API, namespaces and pods.

What the callers of a running cluster use (tests, the demo, benchmarks):
:class:`~batchpilot_localcluster.cluster.LocalCluster` adds starting, reusing and stopping
it. Paths come from the :class:`~batchpilot_localcluster.paths.Layout` under
$BATCHPILOT_HOME.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batchpilot_localcluster.kubeapi import ApiError, KubeAPI
from batchpilot_localcluster.paths import Layout
from batchpilot_localcluster.waits import wait_for

JSON = dict[str, Any]


class ClusterError(RuntimeError):
    """The local cluster could not be started, reached or stopped."""


class ClusterAccess:
    """The local cluster under one $BATCHPILOT_HOME, as its clients reach it: kubectl, helm
    and kwokctl with its kubeconfig, the API client, test namespaces and pods."""

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout = layout or Layout.default()
        self._api: KubeAPI | None = None

    # -- paths and environment -----------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def bin(self) -> Path:
        return self.layout.bin

    @property
    def state(self) -> Path:
        return self.layout.state

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, KWOK_WORKDIR and the cluster binaries first on PATH."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KWOK_WORKDIR"] = str(self.layout.kwok_workdir)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        return env

    # -- commands ------------------------------------------------------------------------

    def _run(
        self,
        tool: str,
        args: Sequence[str],
        *,
        check: bool,
        input: str | None,
        timeout: float,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.layout.binary(tool)), *[str(a) for a in args]]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(argv[1:])} failed with exit code {result.returncode}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, check=check, input=input, timeout=timeout)

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, check=check, input=input, timeout=timeout)

    def kwokctl(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kwokctl", args, check=check, input=None, timeout=timeout)

    def get_json(self, *args: str) -> JSON:
        """`kubectl get ARGS -o json`, parsed."""
        result: JSON = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return result

    def apply(self, manifest: JSON | str, *args: str) -> None:
        """`kubectl apply -f -` with a manifest (a dict becomes JSON)."""
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        self.kubectl("apply", "-f", "-", *args, input=text)

    @property
    def api(self) -> KubeAPI:
        """A JSON client with the admin kubeconfig (see kubeapi.KubeAPI)."""
        if self._api is None:
            if not self.kubeconfig.exists():
                raise ClusterError(f"no kubeconfig at {self.kubeconfig}: is the cluster up?")
            self._api = KubeAPI.from_kubeconfig(self.kubeconfig)
        return self._api

    def close(self) -> None:
        """Close the API client's connections (the cluster keeps running)."""
        if self._api is not None:
            self._api.close()
            self._api = None

    # -- state ---------------------------------------------------------------------------

    def api_healthy(self) -> bool:
        if not self.kubeconfig.exists():
            return False
        try:
            return self.api.healthy()
        except (OSError, ValueError):
            return False

    # -- namespaces ----------------------------------------------------------------------

    def create_namespace(self, prefix: str = "test") -> str:
        """A fresh namespace whose default ServiceAccount exists (pods can be created)."""
        base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower()).strip("-")[:40] or "test"
        name = f"{base}-{uuid.uuid4().hex[:6]}"
        body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"batchpilot.dev/test": "true"}},
        }
        self.api.create("/api/v1/namespaces", body)
        wait_for(
            lambda: self.api.get_or_none(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            timeout=60,
            what=f"ServiceAccount {name}/default",
        )
        return name

    def delete_namespace(self, name: str) -> None:
        """Delete without waiting. Finalizers left on custom objects (say, by an operator that
        no longer runs) are removed so that the namespace really goes away."""
        try:
            self.api.delete(f"/api/v1/namespaces/{name}", {"propagationPolicy": "Background"})
        except ApiError as error:
            if error.status != 404:
                raise
            return
        self.drop_custom_finalizers(name)

    def release_terminating_test_namespaces(self) -> None:
        """Unblock test namespaces stuck in Terminating on finalizers nobody handles."""
        namespaces = self.api.get(
            "/api/v1/namespaces", {"labelSelector": "batchpilot.dev/test=true"}
        )
        for namespace in namespaces["items"]:
            if namespace.get("status", {}).get("phase") == "Terminating":
                self.drop_custom_finalizers(namespace["metadata"]["name"])

    def drop_custom_finalizers(self, namespace: str) -> int:
        """Clear metadata.finalizers of every custom object in `namespace`; return how many."""
        crds = self.api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")["items"]
        cleared = 0
        for crd in crds:
            spec = crd["spec"]
            if spec.get("scope") != "Namespaced":
                continue
            version = next((v["name"] for v in spec["versions"] if v.get("served")), None)
            if version is None:
                continue
            collection = (
                f"/apis/{spec['group']}/{version}/namespaces/{namespace}/{spec['names']['plural']}"
            )
            try:
                items = self.api.get(collection)["items"]
            except ApiError:
                continue
            for item in items:
                if not item["metadata"].get("finalizers"):
                    continue
                patch = {"metadata": {"finalizers": None}}
                try:
                    self.api.patch(
                        f"{collection}/{item['metadata']['name']}", patch, patch_type="merge"
                    )
                    cleared += 1
                except ApiError as error:
                    if error.status != 404:
                        raise
        return cleared

    # -- pods ----------------------------------------------------------------------------

    def pods(self, namespace: str, selector: str = "") -> list[JSON]:
        params = {"labelSelector": selector} if selector else None
        items: list[JSON] = self.api.get(f"/api/v1/namespaces/{namespace}/pods", params)["items"]
        return items

    def wait_pods(
        self,
        namespace: str,
        selector: str = "",
        *,
        count: int = 1,
        ready: bool = True,
        timeout: float = 120,
    ) -> list[JSON]:
        """Wait until exactly `count` pods match, all Ready (or just present); return them."""

        def is_ready(pod: JSON) -> bool:
            conditions = pod.get("status", {}).get("conditions") or []
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        def probe() -> list[JSON] | None:
            pods = [
                p
                for p in self.pods(namespace, selector)
                if not p["metadata"].get("deletionTimestamp")
            ]
            if len(pods) == count and (not ready or all(is_ready(p) for p in pods)):
                return pods
            return None

        def describe() -> str:
            return json.dumps(
                [
                    {"name": p["metadata"]["name"], "status": p.get("status", {})}
                    for p in self.pods(namespace, selector)
                ]
            )[:3000]

        what = f"{count} {'ready ' if ready else ''}pods {selector!r} in {namespace}"
        return wait_for(probe, timeout=timeout, what=what, describe=describe)

    def service_endpoints(self, namespace: str, service: str, port: str | int = "") -> list[str]:
        """`ip:port` of the Ready pods behind a Service, resolved through its selector.

        ClusterIPs do not route here (no kube-proxy), and the API refuses loopback addresses in
        EndpointSlices, so clients go to the pods. `port` picks a service port by name or
        number; by default the first one.
        """
        spec = self.api.get(f"/api/v1/namespaces/{namespace}/services/{service}")["spec"]
        ports = spec.get("ports") or []
        service_port = next((p for p in ports if port in ("", p.get("name"), p.get("port"))), None)
        if service_port is None or not spec.get("selector"):
            return []
        selector = ",".join(f"{k}={v}" for k, v in sorted(spec["selector"].items()))
        target_port = service_port.get("targetPort", service_port["port"])
        endpoints = []
        for pod in self.pods(namespace, selector):
            status = pod.get("status", {})
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in status.get("conditions") or []
            )
            if not ready or not status.get("podIP") or pod["metadata"].get("deletionTimestamp"):
                continue
            port_number = target_port
            if isinstance(target_port, str) and not target_port.isdigit():
                declared = [
                    p
                    for c in pod["spec"]["containers"]
                    for p in c.get("ports") or []
                    if p.get("name") == target_port
                ]
                if not declared:
                    continue
                port_number = declared[0]["containerPort"]
            endpoints.append(f"{status['podIP']}:{port_number}")
        return sorted(endpoints)

    def pod_log(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A local pod's process output (kubectl logs has no kubelet to ask here)."""
        logs = self.layout.agent_dir / "logs"
        paths = sorted(logs.glob(f"{namespace}_{pod}_*/{container or '*'}.log"))
        return "".join(p.read_text(errors="replace") for p in paths)
