"""The Helm chart rendered by `helm lint` and `helm template`, with default and non-default
values. In the cluster layer: it needs the helm binary that `make binaries` builds."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchpilot_localcluster.paths import BUILD_COMMAND, Layout

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "batchpilot"
KUBE_VERSION = "1.36.0"


def helm(*args: str) -> str:
    binary = Layout.default().bin / "helm"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run `{BUILD_COMMAND}`", pytrace=False)
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr or result.stdout
    return result.stdout


def render(*sets: str, namespace: str = "batchpilot-system") -> list[dict[str, Any]]:
    args = ["template", "bp", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


@pytest.mark.parametrize(
    "sets",
    [(), ("watchNamespaces={models,team-b}", "peering.enabled=false", "operator.logLevel=quiet")],
    ids=["defaults", "namespaced"],
)
def test_helm_lint(sets: tuple[str, ...]) -> None:
    args = ["lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    assert "0 chart(s) failed" in helm(*args)


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_default_render_is_cluster_wide_and_restricted() -> None:
    docs = render()
    c = operator_container(docs)
    assert c["image"] == "batchpilot/operator:0.1.0"
    assert c["args"] == ["--all-namespaces", "--peering=batchpilot"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BATCHPILOT_RUNTIME_IMAGE"] == "batchpilot/runtime:0.1.0"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    (deployment,) = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "bp-batchpilot"
    assert find(docs, "ServiceAccount", "bp-batchpilot")
    assert not find(docs, "Role")
    roles = {r["metadata"]["name"]: r for r in find(docs, "ClusterRole")}
    assert set(roles) == {"bp-batchpilot-framework", "bp-batchpilot-application"}
    assert len(find(docs, "ClusterRoleBinding")) == 2
    assert find(docs, "ClusterKopfPeering", "batchpilot")


Rule = tuple[str, str, str]  # (group, resource, resourceName or "")


def rules(role: dict[str, Any]) -> dict[Rule, set[str]]:
    out: dict[Rule, set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [""]:
                    out.setdefault((group, resource, name), set()).update(rule["verbs"])
    return out


APPLICATION: dict[Rule, set[str]] = {
    ("batchpilot.dev", "batchedmodels", ""): {"get", "list", "watch", "patch"},
    ("batchpilot.dev", "batchedmodels/status", ""): {"patch"},
    ("batchpilot.dev", "batchedmodels/finalizers", ""): {"update"},
    ("apps", "deployments", ""): {"get", "list", "watch", "create", "patch"},
    ("", "services", ""): {"get", "list", "watch", "create", "patch"},
    ("", "configmaps", ""): {"get", "list", "watch", "create", "patch"},
    ("", "pods", ""): {"list", "watch", "patch"},
    ("", "events", ""): {"create"},
}
"""What the operator calls (tests/unit/test_rbac_audit.py derives it from the code)."""


def test_rbac_is_least_privilege_and_split() -> None:
    docs = render()
    framework = rules(find(docs, "ClusterRole", "bp-batchpilot-framework")[0])
    application = rules(find(docs, "ClusterRole", "bp-batchpilot-application")[0])
    # kopf lists no namespaces cluster-wide; the peering keep-alive patches only its object.
    assert framework == {
        ("apiextensions.k8s.io", "customresourcedefinitions", ""): {"list", "watch"},
        ("kopf.dev", "clusterkopfpeerings", ""): {"list", "watch"},
        ("kopf.dev", "clusterkopfpeerings", "batchpilot"): {"patch"},
    }
    assert application == APPLICATION
    every_verb = set().union(*framework.values(), *application.values())
    assert not every_verb & {"delete", "deletecollection", "*", "escalate", "bind", "impersonate"}
    assert not any(r == "secrets" for _, r, _ in {**framework, **application})


def test_namespaced_install_grants_nothing_cluster_scoped() -> None:
    docs = render("watchNamespaces={models,team-b}", "peering.enabled=false")
    c = operator_container(docs)
    assert c["args"] == [
        "--namespace=models",
        "--namespace=team-b",
        "--no-cluster-scan",
        "--standalone",
    ]
    assert not find(docs, "ClusterRole")
    assert not find(docs, "ClusterRoleBinding")
    roles = find(docs, "Role")
    assert {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in roles} == {
        (ns, "bp-batchpilot-application") for ns in ("models", "team-b")
    }
    assert all(rules(r) == APPLICATION for r in roles)
    assert len(find(docs, "RoleBinding")) == 2
    assert not find(docs, "ClusterKopfPeering")
    assert not find(docs, "KopfPeering")


def test_namespaced_peering_is_one_object_per_namespace_patched_by_name() -> None:
    docs = render("watchNamespaces={models}", "peering.name=bp-peers")
    assert [p["metadata"]["namespace"] for p in find(docs, "KopfPeering", "bp-peers")] == ["models"]
    (framework,) = find(docs, "Role", "bp-batchpilot-framework")
    assert framework["metadata"]["namespace"] == "models"
    assert rules(framework) == {
        ("kopf.dev", "kopfpeerings", ""): {"list", "watch"},
        ("kopf.dev", "kopfpeerings", "bp-peers"): {"patch"},
    }
    assert not find(docs, "ClusterRole")
    (binding,) = find(docs, "RoleBinding", "bp-batchpilot-framework")
    assert binding["subjects"][0]["namespace"] == "batchpilot-system"


def test_runtime_defaults_and_size_limits_reach_the_operator() -> None:
    env = {e["name"]: e.get("value") for e in operator_container(render())["env"]}
    assert {k: v for k, v in env.items() if "LIMIT" in k or "REQUEST" in k} == {
        "BATCHPILOT_DEFAULT_CPU_REQUEST": "1",
        "BATCHPILOT_DEFAULT_MEMORY_REQUEST": "2Gi",
        "BATCHPILOT_DEFAULT_MEMORY_LIMIT": "8Gi",
        "BATCHPILOT_TMP_SIZE_LIMIT": "1Gi",
        "BATCHPILOT_CACHE_SIZE_LIMIT": "2Gi",
    }
    custom = render(
        "runtime.defaultResources.memoryLimit=32Gi",
        "runtime.defaultResources.cpuRequest=",
        "runtime.cacheSizeLimit=20Gi",
    )
    env = {e["name"]: e.get("value") for e in operator_container(custom)["env"]}
    assert env["BATCHPILOT_DEFAULT_MEMORY_LIMIT"] == "32Gi"
    assert env["BATCHPILOT_DEFAULT_CPU_REQUEST"] == ""
    assert env["BATCHPILOT_CACHE_SIZE_LIMIT"] == "20Gi"


def test_every_empty_dir_of_the_chart_has_a_size_limit() -> None:
    (deployment,) = find(render(), "Deployment")
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    empty = [v for v in volumes if "emptyDir" in v]
    assert empty
    assert all(v["emptyDir"].get("sizeLimit") for v in empty), empty
    (deployment,) = find(render("tmpSizeLimit=16Mi"), "Deployment")
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] == {"sizeLimit": "16Mi"}


def test_non_default_values_reach_the_deployment() -> None:
    docs = render(
        "image.repository=registry.example.com/bp/operator",
        "image.tag=1.2.3",
        "runtime.image=registry.example.com/bp/runtime:1.2.3",
        "operator.resyncSeconds=15",
        "operator.logLevel=verbose",
        "serviceAccount.name=pilot",
        "nodeSelector.pool=system",
        "imagePullSecrets[0].name=regcred",
        "fullnameOverride=pilot-op",
    )
    c = operator_container(docs)
    assert c["image"] == "registry.example.com/bp/operator:1.2.3"
    assert "--verbose" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["BATCHPILOT_RUNTIME_IMAGE"] == "registry.example.com/bp/runtime:1.2.3"
    assert env["BATCHPILOT_RESYNC_SECONDS"] == "15"
    (deployment,) = find(docs, "Deployment", "pilot-op")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pilot"
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    subjects = find(docs, "ClusterRoleBinding")[0]["subjects"]
    assert subjects == [
        {"kind": "ServiceAccount", "name": "pilot", "namespace": "batchpilot-system"}
    ]
