"""`batchpilot-cluster up` / `down` (make cluster / cluster-down) on a cluster of their own.

This starts a second, throwaway cluster under a temporary $BATCHPILOT_HOME (sharing the built
binaries) so that stopping it cannot disturb the session's cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from batchpilot_localcluster.cluster import LocalCluster
from batchpilot_localcluster.paths import Layout
from batchpilot_localcluster.processes import pid_alive
from batchpilot_localcluster.waits import wait_for


def processes_under(path: Path) -> list[int]:
    """PIDs whose command line mentions `path`."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BATCHPILOT_HOME": str(home)}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "batchpilot_localcluster.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_up_then_down_leaves_no_process_behind(cluster: LocalCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "bin").symlink_to(cluster.bin)
    layout = Layout(home)
    other = LocalCluster(layout)
    try:
        up = cli(home, "up", "--gpu-nodes", "1", "--agent-arg=--pod-cidr=127.0.1.0/24")
        assert up.returncode == 0, up.stderr + up.stdout
        assert f"export KUBECONFIG={layout.kubeconfig}" in up.stdout
        assert cli(home, "kubeconfig").stdout.strip() == str(layout.kubeconfig)

        status = json.loads(cli(home, "status").stdout)
        assert status["apiHealthy"] is True
        assert status["nodes"] == {"batchpilot-local": "True", "kwok-gpu-0": "True"}
        assert other.api.server != cluster.api.server

        again = cli(home, "up", "--gpu-nodes", "1")
        assert again.returncode == 0
        assert "already running" in again.stdout

        other.kubectl(
            "run",
            "sleeper",
            "--image=batchpilot/python:test",
            "--overrides",
            json.dumps({"spec": {"nodeSelector": {"batchpilot.dev/local-node": "true"}}}),
            "--command",
            "--",
            "python",
            "-c",
            "import time; time.sleep(3600)",
        )
        pod = other.wait_pods("default", "run=sleeper")[0]
        pid = int(pod["status"]["containerStatuses"][0]["containerID"].split("://")[1])
        assert pod["status"]["podIP"].startswith("127.0.1.")
        assert pid_alive(pid)
        assert processes_under(home), "the control plane runs from this home"
        other.close()

        down = cli(home, "down")
        assert down.returncode == 0, down.stderr
        wait_for(
            lambda: not processes_under(home) and not pid_alive(pid),
            timeout=30,
            what="every process of the throwaway cluster to exit",
        )
        assert not layout.kubeconfig.exists()
        assert json.loads(cli(home, "status").stdout)["apiHealthy"] is False
    finally:
        other.close()
        if processes_under(home):
            cli(home, "down")


def test_a_session_stops_the_cluster_it_started_when_the_last_user_leaves(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "bin").symlink_to(cluster.bin)
    first = LocalCluster(Layout(home), gpu_nodes=0, agent_args=["--pod-cidr=127.0.2.0/24"])
    second = LocalCluster(Layout(home), gpu_nodes=0)
    try:
        with first.session() as started:
            assert started is True
            with second.session() as started_again:
                assert started_again is False, "a running cluster is reused"
            assert first.running(), "another session still uses it"
            assert processes_under(home)
        wait_for(lambda: not processes_under(home), timeout=30, what="the cluster to stop")
        assert not first.layout.kubeconfig.exists()
    finally:
        if processes_under(home):
            cli(home, "down")


def test_up_replaces_a_broken_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "bin").symlink_to(cluster.bin)
    broken = LocalCluster(Layout(home), gpu_nodes=0, agent_args=["--pod-cidr=127.0.3.0/24"])
    try:
        assert broken.up() is True
        apiserver = [
            pid
            for pid in processes_under(home)
            if b"kube-apiserver" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        ]
        assert len(apiserver) == 1
        os.kill(apiserver[0], signal.SIGKILL)
        wait_for(lambda: not broken.api_healthy(), timeout=30, what="the API server to be gone")

        assert broken.up() is True, "a dead control plane is replaced, not reused"
        assert broken.running()
        assert broken.api.server.startswith("https://127.0.0.1:")
    finally:
        broken.down()
        broken.close()
    wait_for(lambda: not processes_under(home), timeout=30, what="the cluster to stop")
