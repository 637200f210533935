"""A pod's volumes as local directories, and its containers' mount paths mapped onto them.

ConfigMap, Secret, projected (configMap, secret, serviceAccountToken, downwardAPI) and
downwardAPI volumes are written atomically (atomicdir) under `<pod dir>/volumes/<name>` and
rewritten on every sync when their source changed. emptyDir is a plain directory, hostPath is
the host path itself, a persistentVolumeClaim is a directory that outlives the pod.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from batchpilot_localcluster import atomicdir
from batchpilot_localcluster.podspec import (
    ContainerConfigError,
    ObjectLookup,
    field_value,
    resource_value,
)

JSON = dict[str, Any]
Files = dict[str, tuple[bytes, int]]

DEFAULT_MODE = 0o644


class TokenSource(Protocol):
    """Issues service account tokens bound to a pod (TokenRequest)."""

    def token(self, pod: JSON, audience: str | None, expiration_seconds: int) -> str: ...


@dataclass
class VolumeContext:
    pod: JSON
    pod_dir: Path
    pod_ip: str
    host_ip: str
    lookup: ObjectLookup
    tokens: TokenSource
    claims_dir: Path

    @property
    def namespace(self) -> str:
        return str(self.pod.get("metadata", {}).get("namespace", "default"))


def _mode(value: Any, default: int) -> int:
    return int(value) & 0o777 if value is not None else default


def _object_files(obj: JSON | None, source: JSON, kind: str, default_mode: int) -> Files:
    """The files of a configMap or secret source, honouring items and optional."""
    name = source.get("name") or source.get("secretName") or ""
    if obj is None:
        if source.get("optional"):
            return {}
        raise ContainerConfigError(f'{kind} "{name}" not found')
    data: dict[str, bytes] = {
        k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()
    }
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if kind == "secret" else str(value).encode()
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files: Files = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise ContainerConfigError(f'{kind} "{name}" has no key "{item["key"]}"')
        files[item["path"]] = (data[item["key"]], _mode(item.get("mode"), default_mode))
    return files


def _downward_files(ctx: VolumeContext, items: list[JSON], default_mode: int) -> Files:
    files: Files = {}
    for item in items:
        if "fieldRef" in item:
            value = field_value(ctx.pod, item["fieldRef"]["fieldPath"], ctx.pod_ip, ctx.host_ip)
        else:
            container = _container(ctx.pod, item["resourceFieldRef"].get("containerName"))
            value = resource_value(container, item["resourceFieldRef"])
        files[item["path"]] = (value.encode(), _mode(item.get("mode"), default_mode))
    return files


def _container(pod: JSON, name: str | None) -> JSON:
    containers = pod.get("spec", {}).get("containers", [])
    return next(
        (c for c in containers if c.get("name") == name), containers[0] if containers else {}
    )


def _projected_files(ctx: VolumeContext, projected: JSON) -> Files:
    default_mode = _mode(projected.get("defaultMode"), DEFAULT_MODE)
    files: Files = {}
    for source in projected.get("sources") or []:
        if "configMap" in source:
            ref = source["configMap"]
            obj = ctx.lookup.configmap(ctx.namespace, ref.get("name", ""))
            files.update(_object_files(obj, ref, "configmap", default_mode))
        elif "secret" in source:
            ref = source["secret"]
            obj = ctx.lookup.secret(ctx.namespace, ref.get("name", ""))
            files.update(_object_files(obj, ref, "secret", default_mode))
        elif "serviceAccountToken" in source:
            ref = source["serviceAccountToken"]
            token = ctx.tokens.token(
                ctx.pod, ref.get("audience"), int(ref.get("expirationSeconds") or 3607)
            )
            files[ref["path"]] = (token.encode(), _mode(None, default_mode))
        elif "downwardAPI" in source:
            files.update(
                _downward_files(ctx, source["downwardAPI"].get("items") or [], default_mode)
            )
        else:
            kinds = ", ".join(sorted(source))
            raise ContainerConfigError(f"projected source {kinds} is not supported locally")
    return files


def sync_volume(volume: JSON, ctx: VolumeContext) -> Path:
    """Bring one volume up to date; return the local directory that stands for it."""
    name = str(volume["name"])
    target = ctx.pod_dir / "volumes" / name
    if "configMap" in volume or "secret" in volume:
        kind = "configmap" if "configMap" in volume else "secret"
        source = volume.get("configMap") or volume.get("secret") or {}
        obj_name = source.get("name") or source.get("secretName") or ""
        obj = (
            ctx.lookup.configmap(ctx.namespace, obj_name)
            if kind == "configmap"
            else ctx.lookup.secret(ctx.namespace, obj_name)
        )
        atomicdir.write(
            target, _object_files(obj, source, kind, _mode(source.get("defaultMode"), DEFAULT_MODE))
        )
    elif "projected" in volume:
        atomicdir.write(target, _projected_files(ctx, volume["projected"]))
    elif "downwardAPI" in volume:
        source = volume["downwardAPI"]
        files = _downward_files(
            ctx, source.get("items") or [], _mode(source.get("defaultMode"), DEFAULT_MODE)
        )
        atomicdir.write(target, files)
    elif "emptyDir" in volume:
        target.mkdir(parents=True, exist_ok=True)
    elif "hostPath" in volume:
        host = Path(str(volume["hostPath"]["path"]))
        if volume["hostPath"].get("type") == "DirectoryOrCreate":
            host.mkdir(parents=True, exist_ok=True)
        elif not host.exists():
            raise ContainerConfigError(f'hostPath "{host}" of volume "{name}" does not exist')
        return host
    elif "persistentVolumeClaim" in volume:
        claim = str(volume["persistentVolumeClaim"]["claimName"])
        target = ctx.claims_dir / ctx.namespace / claim
        target.mkdir(parents=True, exist_ok=True)
    else:
        kinds = ", ".join(sorted(k for k in volume if k != "name"))
        raise ContainerConfigError(
            f'volume "{name}" ({kinds}) is not supported by the local node agent'
        )
    return target


def sync_volumes(ctx: VolumeContext) -> dict[str, Path]:
    """Every volume of the pod, by name."""
    return {v["name"]: sync_volume(v, ctx) for v in ctx.pod.get("spec", {}).get("volumes") or []}


def container_mounts(container: JSON, volumes: Mapping[str, Path]) -> dict[str, str]:
    """mountPath -> local path for one container (subPath resolved inside the volume)."""
    mounts: dict[str, str] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise ContainerConfigError(f'volumeMount "{mount["name"]}" names no volume of the pod')
        local = volumes[mount["name"]]
        sub = mount.get("subPath")
        mounts[mount["mountPath"]] = str(local / sub if sub else local)
    return mounts
