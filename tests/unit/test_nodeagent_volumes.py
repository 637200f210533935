"""Volumes on the local node: atomic publication, projection, mounts."""

from __future__ import annotations

import base64
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from batchpilot_localcluster import atomicdir
from batchpilot_localcluster.podspec import ContainerConfigError
from batchpilot_localcluster.volumes import VolumeContext, container_mounts, sync_volumes

JSON = dict[str, Any]


def test_atomic_write_publishes_files_behind_a_data_link(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    assert atomicdir.write(target, {"a.json": (b"1", 0o644), "sub/b": (b"2", 0o600)}) is True
    assert (target / "a.json").read_text() == "1"
    assert (target / "sub" / "b").read_text() == "2"
    assert os.readlink(target / "a.json") == "..data/a.json"
    assert (target / "sub" / "b").stat().st_mode & 0o777 == 0o600


def test_atomic_write_is_a_no_op_when_nothing_changed(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    atomicdir.write(target, {"a": (b"1", 0o644)})
    before = os.readlink(target / "..data")
    assert atomicdir.write(target, {"a": (b"1", 0o644)}) is False
    assert os.readlink(target / "..data") == before


def test_atomic_write_replaces_removes_and_cleans_old_versions(tmp_path: Path) -> None:
    target = tmp_path / "vol"

    def versions() -> set[str]:
        return {p.name for p in target.iterdir() if p.name.startswith("..") and not p.is_symlink()}

    atomicdir.write(target, {"a": (b"1", 0o644), "b": (b"x", 0o644)})
    first = os.readlink(target / "..data")
    atomicdir.write(target, {"a": (b"2", 0o644)})
    second = os.readlink(target / "..data")
    assert (target / "a").read_text() == "2"
    assert not (target / "b").exists()
    # the replaced version stays for readers already on their way into it, until the next
    assert versions() == {first, second}
    atomicdir.write(target, {"a": (b"3", 0o644)})
    assert versions() == {second, os.readlink(target / "..data")}


def test_readers_never_see_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    contents = [(str(i) * 20000).encode() for i in range(10)]
    atomicdir.write(target, {"f": (contents[0], 0o644)})
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add((target / "f").read_bytes())
            except FileNotFoundError:
                # A reader stalled inside open() through two whole writes finds its version
                # gone, as with kubelet; the runtime's reload reads again on its next poll.
                # The property here is that no read returns a partial or mixed file.
                continue

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for round_ in range(200):
            atomicdir.write(target, {"f": (contents[round_ % 10], 0o644)})
    finally:
        stop.set()
        reader.join()
    assert seen <= set(contents)
    assert len(seen) >= 2  # the reader did race the writer


@pytest.mark.parametrize("name", ["../x", "/abs", "..data/x"])
def test_paths_leaving_the_volume_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid file path"):
        atomicdir.write(tmp_path / "vol", {name: (b"", 0o644)})


class Objects:
    def __init__(self) -> None:
        self.configmaps: dict[str, JSON] = {
            "cfg": {"data": {"batching.json": '{"maxBatchSize": 8}', "other": "o"}}
        }
        self.secrets: dict[str, JSON] = {"sec": {"data": {"k": base64.b64encode(b"v").decode()}}}

    def configmap(self, namespace: str, name: str) -> JSON | None:
        return self.configmaps.get(name)

    def secret(self, namespace: str, name: str) -> JSON | None:
        return self.secrets.get(name)


class Tokens:
    def token(self, pod: JSON, audience: str | None, expiration_seconds: int) -> str:
        return f"token-for-{pod['metadata']['name']}"


def context(tmp_path: Path, volumes: list[JSON], objects: Objects) -> VolumeContext:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"volumes": volumes}}
    return VolumeContext(
        pod=pod,
        pod_dir=tmp_path / "pod",
        pod_ip="127.0.0.4",
        host_ip="127.0.0.1",
        lookup=objects,
        tokens=Tokens(),
        claims_dir=tmp_path / "claims",
    )


def test_configmap_secret_and_projected_volumes(tmp_path: Path) -> None:
    objects = Objects()
    volumes = [
        {
            "name": "config",
            "configMap": {"name": "cfg", "items": [{"key": "batching.json", "path": "b.json"}]},
        },
        {"name": "secret", "secret": {"secretName": "sec", "defaultMode": 0o400}},
        {
            "name": "api",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                    {"configMap": {"name": "cfg", "items": [{"key": "other", "path": "ca.crt"}]}},
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ]
            },
        },
        {"name": "scratch", "emptyDir": {}},
        {"name": "claim", "persistentVolumeClaim": {"claimName": "models"}},
    ]
    local = sync_volumes(context(tmp_path, volumes, objects))
    assert (local["config"] / "b.json").read_text() == '{"maxBatchSize": 8}'
    assert not (local["config"] / "other").exists()
    assert (local["secret"] / "k").read_text() == "v"
    assert (local["secret"] / "k").stat().st_mode & 0o777 == 0o400
    assert (local["api"] / "token").read_text() == "token-for-p"
    assert (local["api"] / "namespace").read_text() == "ns"
    assert local["scratch"].is_dir()
    assert local["claim"] == tmp_path / "claims" / "ns" / "models"

    objects.configmaps["cfg"]["data"]["batching.json"] = '{"maxBatchSize": 16}'
    sync_volumes(context(tmp_path, volumes, objects))
    assert (local["config"] / "b.json").read_text() == '{"maxBatchSize": 16}'


def test_missing_sources_fail_unless_optional(tmp_path: Path) -> None:
    objects = Objects()
    optional = [{"name": "v", "configMap": {"name": "absent", "optional": True}}]
    empty = sync_volumes(context(tmp_path, optional, objects))["v"]
    assert [p.name for p in empty.iterdir() if not p.name.startswith("..")] == []
    required = [{"name": "v", "configMap": {"name": "absent"}}]
    with pytest.raises(ContainerConfigError, match='configmap "absent" not found'):
        sync_volumes(context(tmp_path, required, objects))


def test_unsupported_volume_types_are_named(tmp_path: Path) -> None:
    volumes = [{"name": "v", "iscsi": {}}]
    with pytest.raises(ContainerConfigError, match=r'volume "v" \(iscsi\)'):
        sync_volumes(context(tmp_path, volumes, Objects()))


def test_mounts_map_mount_paths_to_volume_directories(tmp_path: Path) -> None:
    volumes = {"config": tmp_path / "config", "models": tmp_path / "m"}
    container = {
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/batchpilot"},
            {"name": "models", "mountPath": "/models/m1", "subPath": "m1"},
        ]
    }
    assert container_mounts(container, volumes) == {
        "/etc/batchpilot": str(tmp_path / "config"),
        "/models/m1": str(tmp_path / "m" / "m1"),
    }
    with pytest.raises(ContainerConfigError, match="names no volume"):
        container_mounts({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, volumes)
