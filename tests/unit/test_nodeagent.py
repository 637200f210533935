"""The node agent's pure parts: addresses, image mapping, spec translation, status, probes."""

from __future__ import annotations

import base64
import ipaddress
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from batchpilot_localcluster.images import ImageMap, parse_rules, resolve_executable
from batchpilot_localcluster.ipam import AddressesExhaustedError, IPAllocator
from batchpilot_localcluster.kubeapi import Credentials
from batchpilot_localcluster.kwokconfig import gpu_node, kwokctl_configuration
from batchpilot_localcluster.logserver import tail
from batchpilot_localcluster.podspec import (
    ContainerConfigError,
    container_argv,
    container_env,
    expand_references,
    localize,
    rewrite_paths,
)
from batchpilot_localcluster.podstatus import phase, pod_status
from batchpilot_localcluster.probes import Probe, ProbeTracker, parse_probe
from batchpilot_localcluster.tokens import render_kubeconfig

JSON = dict[str, Any]


# -- addresses ---------------------------------------------------------------------------


def test_addresses_are_loopback_skip_the_control_plane_and_are_stable_per_pod() -> None:
    ipam = IPAllocator("127.0.0.0/29")
    first = ipam.allocate("pod-a")
    assert first == "127.0.0.2"
    assert ipam.allocate("pod-a") == first
    assert ipam.allocate("pod-b") == "127.0.0.3"


def test_released_addresses_are_reused() -> None:
    ipam = IPAllocator("127.0.0.0/29")
    a, b = ipam.allocate("a"), ipam.allocate("b")
    ipam.release("a")
    assert ipam.allocate("c") == a
    assert ipam.get("b") == b
    assert ipam.get("a") is None


def test_a_full_range_is_an_error() -> None:
    ipam = IPAllocator("127.0.0.0/30")  # hosts .1 and .2; .1 is the control plane's
    ipam.allocate("a")
    with pytest.raises(AddressesExhaustedError):
        ipam.allocate("b")


def test_addresses_whose_ports_are_taken_are_skipped() -> None:
    ipam = IPAllocator("127.0.0.0/29")
    assert ipam.allocate("a", usable=lambda ip: ip != "127.0.0.2") == "127.0.0.3"


def test_only_loopback_ranges_are_accepted() -> None:
    with pytest.raises(ValueError, match="loopback"):
        IPAllocator("10.0.0.0/24")


# -- images ------------------------------------------------------------------------------


def test_batchpilot_images_map_to_console_scripts() -> None:
    images = ImageMap()
    assert images.entrypoint("ghcr.io/acme/batchpilot/runtime:0.1.0") == ("batchpilot-runtime",)
    assert images.entrypoint("batchpilot/operator:dev") == ("batchpilot-operator",)
    assert images.entrypoint("docker.io/library/nginx:1.27") is None


def test_extra_rules_come_first_and_are_reread_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "images.yaml"
    images = ImageMap(path)
    assert images.entrypoint("example.com/echo:1") is None
    path.write_text("images:\n  - pattern: 'example.com/echo:*'\n    command: [echo, hi]\n")
    assert images.entrypoint("example.com/echo:1") == ("echo", "hi")
    path.write_text("images:\n  - pattern: '*batchpilot/runtime*'\n    command: [other]\n")
    assert images.entrypoint("batchpilot/runtime:x") == ("other",)
    assert images.entrypoint("example.com/echo:1") is None


def test_a_broken_image_map_keeps_the_previous_rules(tmp_path: Path) -> None:
    path = tmp_path / "images.yaml"
    path.write_text("images:\n  - pattern: 'a/*'\n    command: [a]\n")
    images = ImageMap(path)
    assert images.entrypoint("a/b") == ("a",)
    path.write_text("images:\n  - pattern: 'a/*'\n    command: 7\n  - {}\n")
    assert images.entrypoint("a/b") == ("a",)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"images": [{"command": ["x"]}]}, r"images\[0\]\.pattern"),
        ({"images": [{"pattern": "x", "command": []}]}, r"images\[0\]\.command"),
        (["x"], "mapping"),
    ],
)
def test_image_rules_name_the_bad_field(document: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rules(document)


def test_executables_resolve_from_this_venv_first() -> None:
    assert resolve_executable("python") == sys.executable
    assert resolve_executable("/bin/sh") == "/bin/sh"
    assert resolve_executable("surely-not-a-command-anywhere") is None


# -- paths and environment ---------------------------------------------------------------


MOUNTS = {"/etc/batchpilot": "/pods/p1/volumes/config", "/etc/batchpilot/extra": "/pods/p1/x"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/etc/batchpilot", "/pods/p1/volumes/config"),
        ("/etc/batchpilot/batching.json", "/pods/p1/volumes/config/batching.json"),
        (
            "--config=/etc/batchpilot/batching.json",
            "--config=/pods/p1/volumes/config/batching.json",
        ),
        ("/etc/batchpilot/extra/a", "/pods/p1/x/a"),
        ("/etc/batchpilotx/a", "/etc/batchpilotx/a"),
        ("/opt/etc/batchpilot/a", "/opt/etc/batchpilot/a"),
        ("a:/etc/batchpilot:b", "a:/pods/p1/volumes/config:b"),
        ("nothing here", "nothing here"),
    ],
)
def test_mount_paths_are_rewritten_as_whole_path_prefixes(value: str, expected: str) -> None:
    assert rewrite_paths(value, MOUNTS) == expected


def test_rewritten_text_is_not_rewritten_again() -> None:
    mounts = {"/data": "/state/pods/p/data", "/state": "/elsewhere"}
    assert rewrite_paths("/data/x /state/y", mounts) == "/state/pods/p/data/x /elsewhere/y"


def test_the_wildcard_address_becomes_the_pod_address() -> None:
    assert localize("--host=0.0.0.0", {}, "127.0.0.7") == "--host=127.0.0.7"


def test_references_expand_like_kubernetes() -> None:
    env = {"A": "1", "B": "two"}
    assert expand_references("$(A)-$(B)-$(C)-$$(A)", env) == "1-two-$(C)-$(A)"


class Objects:
    def __init__(self, configmaps: dict[str, JSON], secrets: dict[str, JSON]) -> None:
        self.configmaps, self.secrets = configmaps, secrets

    def configmap(self, namespace: str, name: str) -> JSON | None:
        return self.configmaps.get(name)

    def secret(self, namespace: str, name: str) -> JSON | None:
        return self.secrets.get(name)


POD: JSON = {
    "metadata": {"name": "p1", "namespace": "ns", "uid": "u1", "labels": {"app": "x"}},
    "spec": {"nodeName": "batchpilot-local", "serviceAccountName": "sa"},
}


def test_environment_follows_the_spec() -> None:
    objects = Objects(
        {"cm": {"data": {"MODE": "fast", "LEVEL": "3"}}},
        {"sec": {"data": {"TOKEN": base64.b64encode(b"s3cret").decode()}}},
    )
    container = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "PLAIN", "value": "v-$(CM_MODE)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "TOKEN"}}},
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "LEVEL"}}},
            {
                "name": "OPT",
                "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}},
            },
        ],
    }
    env = container_env(POD, container, pod_ip="127.0.0.5", host_ip="127.0.0.1", lookup=objects)
    assert env == {
        "CM_MODE": "fast",
        "CM_LEVEL": "3",
        "PLAIN": "v-fast",
        "NAME": "p1",
        "NS": "ns",
        "IP": "127.0.0.5",
        "APP": "x",
        "SECRET": "s3cret",
        "LEVEL": "3",
    }


def test_a_missing_configmap_is_a_config_error_naming_it() -> None:
    container = {
        "name": "c",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}],
    }
    with pytest.raises(ContainerConfigError, match='configmap "absent" not found'):
        container_env(POD, container, pod_ip="", host_ip="", lookup=Objects({}, {}))


def test_command_replaces_the_entrypoint_and_args_follow() -> None:
    env = {"PORT": "8000"}
    assert container_argv(("batchpilot-runtime",), {"args": ["--port", "$(PORT)"]}, env) == [
        "batchpilot-runtime",
        "--port",
        "8000",
    ]
    assert container_argv(("x",), {"command": ["python", "-V"]}, env) == ["python", "-V"]


# -- status ------------------------------------------------------------------------------


def running(name: str, ready: bool) -> JSON:
    return {"name": name, "ready": ready, "state": {"running": {}}, "lastState": {}}


def terminated(name: str, code: int) -> JSON:
    return {"name": name, "ready": False, "state": {"terminated": {"exitCode": code}}}


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([{"name": "a", "state": {"waiting": {}}}], "Pending"),
        ([running("a", False)], "Running"),
        ([terminated("a", 0), terminated("b", 0)], "Succeeded"),
        ([terminated("a", 0), terminated("b", 1)], "Failed"),
        (
            [{"name": "a", "state": {"waiting": {}}, "lastState": {"terminated": {"exitCode": 1}}}],
            "Running",
        ),
    ],
)
def test_phase(containers: list[JSON], expected: str) -> None:
    got = phase([], containers, init_done=True, init_failed=False, restart_policy="Always")
    assert got == expected


def test_conditions_move_their_transition_time_only_when_they_flip() -> None:
    pod = {
        "spec": {},
        "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]},
    }
    transitions: dict[str, tuple[str, str]] = {}
    common: JSON = {
        "init": [],
        "init_done": True,
        "init_failed": False,
        "pod_ip": "127.0.0.2",
        "host_ip": "127.0.0.1",
        "start_time": "t0",
        "transitions": transitions,
    }
    first = pod_status(pod, containers=[running("a", False)], now="t1", **common)
    kinds = {c["type"]: c for c in first["conditions"]}
    assert kinds["PodScheduled"]["status"] == "True", "the scheduler's condition is kept"
    assert kinds["Ready"]["status"] == "False"
    assert kinds["Ready"]["reason"] == "ContainersNotReady"
    second = pod_status(pod, containers=[running("a", True)], now="t2", **common)
    third = pod_status(pod, containers=[running("a", True)], now="t3", **common)
    ready = [next(c for c in s["conditions"] if c["type"] == "Ready") for s in (second, third)]
    assert [c["status"] for c in ready] == ["True", "True"]
    assert [c["lastTransitionTime"] for c in ready] == ["t2", "t2"]
    assert third["podIP"] == "127.0.0.2"
    assert third["phase"] == "Running"


# -- probes ------------------------------------------------------------------------------


def test_probes_resolve_named_ports_and_aim_at_the_pod() -> None:
    container = {"name": "c", "ports": [{"name": "http", "containerPort": 8000}]}
    probe = parse_probe(
        {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 2},
        container,
        "127.0.0.9",
    )
    assert probe is not None
    assert (probe.kind, probe.host, probe.port, probe.path, probe.period) == (
        "http",
        "127.0.0.9",
        8000,
        "/v2/health/ready",
        2.0,
    )
    assert parse_probe(None, container, "127.0.0.9") is None


def test_probe_thresholds() -> None:
    probe = Probe("tcp", "127.0.0.2", 1, success_threshold=2, failure_threshold=2, period=1)
    tracker = ProbeTracker(probe, started_at=0.0)
    assert tracker.healthy is False
    assert tracker.record(True, "ok", 1.0) is False
    assert tracker.record(True, "ok", 2.0) is True
    assert tracker.healthy is True
    assert tracker.record(False, "no", 3.0) is False
    assert tracker.record(False, "no", 4.0) is True
    assert tracker.healthy is False
    assert tracker.due(4.5) is False
    assert tracker.due(5.0) is True


# -- cluster configuration ---------------------------------------------------------------


def test_kwokctl_uses_local_binaries_on_loopback(tmp_path: Path) -> None:
    (document,) = kwokctl_configuration(
        tmp_path, kube_version="v1.36.3", etcd_version="3.6.16", cache_dir=tmp_path / "c"
    )
    options = document["options"]
    assert options["bindAddress"] == "127.0.0.1"
    assert options["runtime"] == "binary"
    for key in ("kubeApiserverBinary", "etcdBinary", "kwokControllerBinary", "kubectlBinary"):
        assert options[key].startswith(str(tmp_path)), key
    patch = document["componentsPatches"][0]
    assert patch["name"] == "kwok-controller"
    args = {a["key"]: a["value"] for a in patch["extraArgs"]}
    assert args["manage-all-nodes"] == "false"
    assert args["manage-nodes-with-annotation-selector"] == "kwok.x-k8s.io/node=fake"
    assert ipaddress.ip_network(args["cidr"], strict=False).subnet_of(
        ipaddress.ip_network("127.0.0.0/8")
    )


def test_gpu_nodes_are_kwok_managed_and_tainted() -> None:
    node = gpu_node("g0", gpus=4)
    assert node["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
    assert node["spec"]["taints"][0]["effect"] == "NoSchedule"


def test_log_tail_keeps_the_last_lines() -> None:
    data = b"a\nb\nc\n"
    assert tail(data, 2) == b"b\nc\n"
    assert tail(data, 10) == data
    assert tail(data, 0) == b""


# -- kubeconfig --------------------------------------------------------------------------


def test_kubeconfig_credentials_follow_the_current_context(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok-from-file\n")
    (tmp_path / "ca.crt").write_bytes(b"CA")
    config = {
        "current-context": "b",
        "clusters": [
            {"name": "one", "cluster": {"server": "https://127.0.0.1:1"}},
            {
                "name": "two",
                "cluster": {"server": "https://127.0.0.1:2/", "certificate-authority": "ca.crt"},
            },
        ],
        "users": [
            {"name": "u1", "user": {"token": "inline"}},
            {"name": "u2", "user": {"tokenFile": "token"}},
        ],
        "contexts": [
            {"name": "a", "context": {"cluster": "one", "user": "u1"}},
            {"name": "b", "context": {"cluster": "two", "user": "u2"}},
        ],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    credentials = Credentials.from_kubeconfig(path)
    assert credentials.server == "https://127.0.0.1:2"
    assert credentials.token == "tok-from-file"
    assert credentials.ca_pem == b"CA"
    assert credentials.cert_pem is None


def test_pod_kubeconfigs_carry_the_token_and_the_namespace() -> None:
    text = render_kubeconfig("https://127.0.0.1:6443", b"CA", "team-a", "t0k")
    config = yaml.safe_load(text)
    assert config["users"][0]["user"] == {"token": "t0k"}
    assert config["contexts"][0]["context"]["namespace"] == "team-a"
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]) == b"CA"
