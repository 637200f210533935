"""Watch the batching config file and apply each new valid version without a restart.

Kubelet updates a mounted ConfigMap by swapping a symlink, and other tools rewrite the file in
place; reading the (tiny) file every ``interval`` seconds and comparing bytes catches both.
A missing file keeps the config in force and is no error; an invalid one is logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from batchpilot_contract.batching import BatchingConfig, ConfigError

log = logging.getLogger(__name__)


class ConfigWatcher:
    """Holds the config in force and follows ``path``; ``on_change`` gets each new one."""

    def __init__(
        self,
        path: Path,
        base: BatchingConfig,
        *,
        on_change: Callable[[BatchingConfig], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.path = path
        self.config = base
        self.error: str | None = None
        self.on_change = on_change
        self.interval = interval
        self._seen: bytes | None = None
        self._missing = False
        self._task: asyncio.Task[None] | None = None

    def check(self) -> bool:
        """Read the file once; apply it if it changed and is valid. True if applied."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            # Not an error: the config in force stays. Whatever was said of the old file no
            # longer holds, and a file written later is read afresh, even if it is the same.
            if not self._missing:
                log.info("no batching config at %s; using %s", self.path, self._describe())
            self._missing = True
            self._seen = None
            self.error = None
            return False
        except OSError as exc:
            self._report(f"cannot read {self.path}: {exc.strerror or exc}")
            return False
        self._missing = False
        if data == self._seen:
            return False
        self._seen = data
        try:
            config = BatchingConfig.from_json(data)
        except ConfigError as exc:
            self._report(f"{self.path}: {exc}; keeping {self._describe()}")
            return False
        self.error = None
        if config == self.config:
            return False
        self.config = config
        log.info("batching config applied: %s", self._describe())
        if self.on_change is not None:
            self.on_change(config)
        return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # never let the watcher die: the last good config stays
                log.exception("checking %s failed", self.path)

    def _report(self, message: str) -> None:
        if message != self.error:
            log.warning("invalid batching config ignored: %s", message)
        self.error = message

    def _describe(self) -> str:
        c = self.config
        return (
            f"maxBatchSize={c.max_batch_size} maxWaitMs={c.max_wait_ms} maxQueue={c.max_queue} "
            f"requestTimeoutMs={c.request_timeout_ms} generation={c.generation}"
        )
