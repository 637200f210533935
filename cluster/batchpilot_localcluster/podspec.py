"""From a pod's container spec to a local process: argv and environment, with paths localized.

Pure functions. A container's mount paths (/etc/batchpilot, ...) do not exist on this
machine, so every value of command, args and env is rewritten to point into the pod's own
directory; the wildcard address 0.0.0.0 becomes the pod's loopback IP.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

JSON = dict[str, Any]

ANY_ADDRESS = "0.0.0.0"

_PATH_CHAR = r"[\w.\-/]"
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)")


class ContainerConfigError(Exception):
    """The spec refers to something missing (kubelet's CreateContainerConfigError)."""


class ObjectLookup(Protocol):
    """Reads ConfigMaps and Secrets (None when absent)."""

    def configmap(self, namespace: str, name: str) -> JSON | None: ...

    def secret(self, namespace: str, name: str) -> JSON | None: ...


def rewrite_paths(value: str, mounts: Mapping[str, str]) -> str:
    """Replace each mount path in `value` by its local directory.

    A mount path matches only as a whole path prefix: `/etc/bp` matches `/etc/bp`,
    `/etc/bp/x.json` and `--config=/etc/bp/x`, never `/etc/bpx` or `/opt/etc/bp`. The longest
    mount path wins, and replaced text is never rewritten again.
    """
    targets = {path.rstrip("/"): local for path, local in mounts.items() if path.rstrip("/")}
    if not targets:
        return value
    alternatives = "|".join(re.escape(p) for p in sorted(targets, key=len, reverse=True))
    pattern = re.compile(rf"(?<!{_PATH_CHAR})({alternatives})(?=/|$|[^\w.\-/])")
    return pattern.sub(lambda m: targets[m.group(1)], value)


def replace_any_address(value: str, pod_ip: str) -> str:
    """0.0.0.0 (listen everywhere) becomes the pod's own address."""
    return value.replace(ANY_ADDRESS, pod_ip)


def localize(value: str, mounts: Mapping[str, str], pod_ip: str) -> str:
    return replace_any_address(rewrite_paths(value, mounts), pod_ip)


def expand_references(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes $(VAR) expansion: known names expand, unknown stay as written, $$ is $."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_REF.sub(replace, value)


def field_value(pod: JSON, field_path: str, pod_ip: str, host_ip: str) -> str:
    """The downward API: a fieldRef's value for this pod."""
    metadata, spec = pod.get("metadata", {}), pod.get("spec", {})
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return str(simple[field_path])
    keyed = _FIELD_KEY.match(field_path)
    if keyed:
        return str((metadata.get(keyed.group(1)) or {}).get(keyed.group(2), ""))
    if field_path in ("metadata.labels", "metadata.annotations"):
        items = metadata.get(field_path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {field_path!r}")


def resource_value(container: JSON, ref: JSON) -> str:
    """A resourceFieldRef's value: the raw quantity from the container's resources, or 0."""
    section, _, name = str(ref.get("resource", "")).partition(".")
    quantity = ((container.get("resources") or {}).get(section) or {}).get(name)
    return str(quantity) if quantity is not None else "0"


def _data(obj: JSON, *, secret: bool) -> dict[str, str]:
    data: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value).decode(errors="replace") if secret else str(value)
    if not secret:
        for key, value in (obj.get("binaryData") or {}).items():
            data[key] = base64.b64decode(value).decode(errors="replace")
    return data


def _source(lookup: ObjectLookup, kind: str, namespace: str, name: str) -> JSON | None:
    return (
        lookup.configmap(namespace, name) if kind == "configmap" else lookup.secret(namespace, name)
    )


def container_env(
    pod: JSON,
    container: JSON,
    *,
    pod_ip: str,
    host_ip: str,
    lookup: ObjectLookup,
) -> dict[str, str]:
    """The environment the container's spec asks for (envFrom, then env in order)."""
    namespace = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = str(source.get("prefix", ""))
        for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
            ref = source.get(key)
            if not ref:
                continue
            obj = _source(lookup, kind, namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind} "{ref["name"]}" not found')
            for name, value in _data(obj, secret=kind == "secret").items():
                env[prefix + name] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand_references(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            kind, ref = (
                ("configmap", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("secret", source.get("secretKeyRef") or {})
            )
            obj = _source(lookup, kind, namespace, ref.get("name", ""))
            data = None if obj is None else _data(obj, secret=kind == "secret")
            if data is None or ref.get("key") not in data:
                if ref.get("optional"):
                    continue
                missing = f'{kind} "{ref.get("name")}"' + (
                    f' has no key "{ref.get("key")}"' if data is not None else " not found"
                )
                raise ContainerConfigError(missing)
            env[name] = data[ref["key"]]
    return env


def container_argv(entrypoint: Sequence[str], container: JSON, env: Mapping[str, str]) -> list[str]:
    """`command` replaces the image's entrypoint, `args` follow; $(VAR) expands from env."""
    command = [str(c) for c in container.get("command") or entrypoint]
    args = [str(a) for a in container.get("args") or []]
    return [expand_references(part, env) for part in [*command, *args]]
