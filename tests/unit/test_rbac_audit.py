"""The chart's application RBAC against the API calls the operator makes: every call the
operator modules make through the kubernetes client, plus what kopf does for the handlers
they register, must be granted, and nothing more. A new API call fails here until it is
classified below and the chart's rules follow it (charts/batchpilot/templates/_helpers.tpl).

The rendered Roles are checked against the same rules with helm in
tests/cluster/test_chart_render.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import kopf
import yaml

import batchpilot_operator.handlers  # noqa: F401  (registers the handlers)
from batchpilot_operator import api

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "batchpilot_operator"
HELPERS = ROOT / "charts" / "batchpilot" / "templates" / "_helpers.tpl"

Need = tuple[str, str, str]  # (API group, resource, verb)
BM = api.PLURAL

CLIENT_CALLS: dict[str, set[Need]] = {
    "get_namespaced_custom_object": {(api.GROUP, BM, "get")},
    "patch_namespaced_custom_object_status": {(api.GROUP, f"{BM}/status", "patch")},
    "read_namespaced_config_map": {("", "configmaps", "get")},
    "read_namespaced_service": {("", "services", "get")},
    "read_namespaced_deployment": {("apps", "deployments", "get")},
    # Server-side apply: an apply that finds no object creates it, which needs create too.
    "patch_namespaced_config_map": {("", "configmaps", "patch"), ("", "configmaps", "create")},
    "patch_namespaced_service": {("", "services", "patch"), ("", "services", "create")},
    "patch_namespaced_deployment": {
        ("apps", "deployments", "patch"),
        ("apps", "deployments", "create"),
    },
    "list_namespaced_pod": {("", "pods", "list")},
    "patch_namespaced_pod": {("", "pods", "patch")},
}
"""Each kubernetes client method the operator calls, and the permissions it needs."""

CLIENT_GROUPS = {"core", "apps", "custom"}
"""The attributes of :class:`batchpilot_operator.kube.Clients` that hold API groups."""


def client_methods() -> dict[str, list[str]]:
    """Every ``<clients>.core|apps|custom.<method>`` in the operator's modules, with where."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and node.value.attr in CLIENT_GROUPS
            ):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                found.setdefault(node.attr, []).append(where)
    return found


def kopf_needs() -> set[Need]:
    """What kopf does for the registered handlers: list and watch each watched resource;
    patch the BatchedModel (its progress annotations and, for daemons and timers, its
    finalizer); post Events (create, never update)."""
    registry = kopf.get_default_registry()
    needs: set[Need] = {("", "events", "create")}
    for handlers in (registry._watching, registry._spawning, registry._changing):
        for handler in handlers.get_all_handlers():
            selector = handler.selector
            assert selector is not None
            resource = selector.plural or selector.any_name
            assert resource, selector
            group = selector.group or ""
            needs |= {(group, resource, "list"), (group, resource, "watch")}
    needs.add((api.GROUP, BM, "patch"))
    return needs


def owner_reference_needs() -> set[Need]:
    """kopf.adopt sets blockOwnerDeletion, which the API server lets only those who may
    update the owner's finalizers set."""
    child: dict[str, Any] = {"metadata": {}}
    owner = {"apiVersion": f"{api.GROUP}/{api.VERSION}", "kind": api.KIND}
    owner["metadata"] = {"name": "m", "namespace": "ns", "uid": "u"}  # type: ignore[assignment]
    kopf.adopt(child, owner=kopf.Body(owner))  # type: ignore[arg-type]
    (ref,) = child["metadata"]["ownerReferences"]
    return {(api.GROUP, f"{BM}/finalizers", "update")} if ref.get("blockOwnerDeletion") else set()


def chart_application_rules() -> set[Need]:
    """The chart's application rules (plain YAML inside its ``define``), flattened."""
    text = HELPERS.read_text()
    match = re.search(
        r'\{\{-? define "batchpilot.applicationRules" -?\}\}(.*?)\{\{-? end -?\}\}', text, re.S
    )
    assert match, "the applicationRules template is gone"
    assert "{{" not in match.group(1), "applicationRules must stay plain YAML for this audit"
    granted: set[Need] = set()
    for rule in yaml.safe_load(match.group(1)):
        assert "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted |= {(group, resource, verb) for verb in rule["verbs"]}
    return granted


def test_every_client_call_of_the_operator_is_classified() -> None:
    found = client_methods()
    unknown = {m: w for m, w in found.items() if m not in CLIENT_CALLS}
    assert not unknown, f"classify these API calls in CLIENT_CALLS: {unknown}"
    assert set(found) == set(CLIENT_CALLS), "a classified call is no longer made: drop it"


def test_the_charts_rules_are_exactly_what_the_operator_needs() -> None:
    needed = set().union(*CLIENT_CALLS.values()) | kopf_needs() | owner_reference_needs()
    granted = chart_application_rules()
    assert not needed - granted, f"missing from the chart: {sorted(needed - granted)}"
    assert not granted - needed, f"granted but never used: {sorted(granted - needed)}"


def test_no_rule_reaches_secrets_or_deletes() -> None:
    granted = chart_application_rules()
    assert not any(resource == "secrets" for _, resource, _ in granted)
    assert not {verb for _, _, verb in granted} & {"delete", "deletecollection", "*"}
