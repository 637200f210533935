"""A container as a local process: its own session (process group), output to a log file.

Stopping follows kubelet: SIGTERM to the whole group, the grace period, then SIGKILL.
:func:`spawn_detached` starts a process the same way but keeps no child around (the node
agent, which outlives the command that starts it).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

JSON = dict[str, Any]


class Process:
    """One run of a container's command."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
    ) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            log.write(f"--- {stamp} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self._popen.pid
        self.started_at = time.time()

    def poll(self) -> int | None:
        """The exit code once the process ended (negative: killed by that signal)."""
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, grace: float) -> int:
        """SIGTERM the group, wait up to `grace` seconds, then SIGKILL; return the exit code."""
        if self.running:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=max(0.0, grace))
        # Children that outlived the main process go too.
        self.signal_group(signal.SIGKILL)
        return self._popen.wait()


def describe_exit(code: int) -> tuple[str, int]:
    """Kubernetes' (reason, exitCode) for a process exit code."""
    if code == 0:
        return "Completed", 0
    if code < 0:
        # Killed by a signal: shells report 128 + signal number, and so does Kubernetes.
        return "Error", 128 - code
    return "Error", code


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (tells a PID from its reuse)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def spawn_detached(argv: Sequence[str], log_path: Path, env: dict[str, str]) -> int:
    """Start `argv` in the background, in its own session, output appended to `log_path`.

    A shell starts it and exits at once, so the caller keeps no child process around (no
    zombie, no Popen object outliving its process); returns the background PID.
    """
    script = 'log="$1"; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    result = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log_path), *argv],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        start_new_session=True,
    )
    return int(result.stdout.strip())


class ProcessRegistry:
    """The PIDs of running containers, on disk, so a crashed agent's children can be found."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _load(self) -> dict[str, JSON]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, entries: dict[str, JSON]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        os.replace(tmp, self.path)

    def add(self, pid: int, **info: str) -> None:
        with self._lock:
            entries = self._load()
            entries[str(pid)] = {**info, "startTime": start_time(pid)}
            self._save(entries)

    def remove(self, pid: int) -> None:
        with self._lock:
            entries = self._load()
            if entries.pop(str(pid), None) is not None:
                self._save(entries)

    def alive(self) -> list[int]:
        """Registered PIDs that still run the process that was registered."""
        with self._lock:
            entries = self._load()
        return [
            int(pid)
            for pid, info in entries.items()
            if info.get("startTime") is not None and start_time(int(pid)) == info["startTime"]
        ]

    def kill_all(self, grace: float = 5.0) -> list[int]:
        """Stop every registered process group still alive (SIGTERM, grace, SIGKILL)."""
        pids = self.alive()
        for pid in pids:
            _killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            _killpg(pid, signal.SIGKILL)
        with self._lock:
            self._save({})
        return pids


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
