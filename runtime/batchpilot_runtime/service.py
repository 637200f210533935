"""The runtime's state behind the HTTP app: models, one batcher per model worker, the config
in force, telemetry, and the load and drain lifecycle.

:func:`batchpilot_runtime.app.create_app` wraps one :class:`Runtime` in routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.metrics import OUTCOMES
from batchpilot_runtime.api import ApiError
from batchpilot_runtime.backends import ModelInfo, ServedModel
from batchpilot_runtime.batcher import Batcher, BatcherClosed, DeadlineExceeded, QueueFull
from batchpilot_runtime.reload import ConfigWatcher
from batchpilot_runtime.settings import Settings
from batchpilot_runtime.telemetry import Telemetry

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499
"""The status of a request whose client left before its answer (nginx's convention)."""

Loader = Callable[[], Sequence[ServedModel]]


class Runtime:
    """Everything the app holds: models, their batchers, the config in force, telemetry."""

    def __init__(
        self,
        settings: Settings,
        loader: Loader,
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.served_name
        self.loader = loader
        self.on_fatal = on_fatal
        self.watcher = ConfigWatcher(
            settings.config,
            settings.base_config(),
            on_change=self._apply_config,
            interval=settings.reload_interval,
        )
        self.telemetry = Telemetry(queue_depth=self.queue_depth, config=self.config)
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.models: list[ServedModel] = []
        self.batchers: list[Batcher] = []
        self.ready = False
        # SIGTERM came: readiness is false so that endpoints drop the pod, and requests are still
        # served (the drain delay, then uvicorn finishing what it accepted).
        self.draining = False
        # The app is shutting down (lifespan end): inference that still arrives gets 503.
        self.stopping = False
        self.load_error: str | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._load_thread: threading.Thread | None = None

    # -- state -------------------------------------------------------------------------------

    def config(self) -> BatchingConfig:
        return self.watcher.config

    def queue_depth(self) -> int:
        return sum(b.queue_depth for b in self.batchers)

    @property
    def info(self) -> ModelInfo:
        return self.models[0].info

    @property
    def routable(self) -> bool:
        """Whether a Service should send traffic here (``/v2/health/ready``)."""
        return self.ready and not self.draining

    def _apply_config(self, config: BatchingConfig) -> None:
        for batcher in self.batchers:
            batcher.set_config(config)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self.watcher.check()
        self.watcher.start()
        self._load_task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        try:
            self.models = await self._run_loader()
            if not self.models:
                raise RuntimeError("the loader returned no model")
            for model in self.models:
                await model.warm_up()
            self.batchers = [
                Batcher(
                    model,
                    self.config(),
                    max_batch_cap=model.max_batch_cap,
                    pipeline_depth=self.settings.pipeline_depth,
                    observer=self.telemetry,
                )
                for model in self.models
            ]
            for batcher in self.batchers:
                batcher.start()
            for model in self.models:
                self.telemetry.device_loaded(model.info.device, emulated=bool(model.info.emulated))
            self.ready = True
            info = self.info
            log.info(
                "serving %s (%s) on %s; ready",
                self.name,
                info.task,
                ", ".join(m.info.device for m in self.models),
            )
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")
            if self.on_fatal is not None:
                self.on_fatal(exc)

    async def _run_loader(self) -> list[ServedModel]:
        """Run the loader in a daemon thread of its own, never the loop's default executor.

        A load cannot be interrupted (it is file I/O and torch code), and both the executor's
        shutdown at the end of ``asyncio.run`` and the interpreter's exit join executor
        threads, so SIGTERM during a load would wait for all of it. A daemon thread is joined
        by nothing; the process then exits without it (see :meth:`load_running`).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[ServedModel]] = loop.create_future()

        def settle(models: list[ServedModel] | None, error: BaseException | None) -> None:
            if done.done():  # cancelled: nobody waits for this load any more
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(models or [])

        def run() -> None:
            models: list[ServedModel] | None = None
            error: BaseException | None = None
            try:
                models = list(self.loader())
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is ending
                loop.call_soon_threadsafe(settle, models, error)

        self._load_thread = threading.Thread(target=run, name="model-load", daemon=True)
        self._load_thread.start()
        return await done

    def load_running(self) -> bool:
        """Whether the loader thread still runs (after :meth:`stop`: an abandoned load)."""
        return self._load_thread is not None and self._load_thread.is_alive()

    async def stop(self) -> None:
        """Refuse new work, finish what was accepted, release the models."""
        self.draining = True
        self.stopping = True
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        await asyncio.gather(*(b.aclose() for b in self.batchers))
        for model in self.models:
            await asyncio.to_thread(model.close)
        await self.watcher.aclose()

    # -- inference ---------------------------------------------------------------------------

    def check_accepting(self) -> None:
        if self.stopping:
            raise ApiError(503, "shutting down", kind="unavailable")
        if not self.ready:
            raise ApiError(503, "model is loading", kind="unavailable")

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise ApiError(
                404,
                f"model: {requested!r} is not served here; this server serves {self.name!r}",
                param="model",
                kind="not_found",
            )

    def check_texts(self, texts: list[str], field: str) -> None:
        s = self.settings
        limit = min(s.max_inputs, self.config().max_queue)
        if len(texts) > limit:
            raise ApiError(
                413, f"{field}: {len(texts)} texts; at most {limit} per request", param=field
            )
        for i, text in enumerate(texts):
            if len(text) > s.max_input_chars:
                raise ApiError(
                    413,
                    f"{field}[{i}]: {len(text)} characters; at most {s.max_input_chars}",
                    param=field,
                )

    async def infer(
        self,
        request: Request,
        kind: Hashable,
        texts: Sequence[Any],
        priority: int,
        *,
        lengths: list[int] | None = None,
    ) -> list[Any]:
        """Queue every item (a text, unless the task says otherwise) on the least loaded
        worker, all or none, and wait for all the outputs. ``lengths`` default to the texts'."""
        batcher = min(self.batchers, key=lambda b: b.load)
        if lengths is None:
            lengths = [len(t) for t in texts]
        try:
            futures = batcher.submit_many(kind, list(texts), lengths=lengths, priority=priority)
        except QueueFull as exc:
            raise ApiError(
                429,
                "queue full; retry later",
                kind="rate_limit",
                headers={"Retry-After": str(int(exc.retry_after))},
            ) from None
        except BatcherClosed:
            raise ApiError(503, "shutting down", kind="unavailable") from None
        # One future for "every item done, or the client gone": a single wake-up per request,
        # without gather's and wait()'s intermediate futures on this per-request path.
        settled = _when_all(futures)
        disconnected = asyncio.ensure_future(_client_gone(request.receive))
        disconnected.add_done_callback(lambda _: _resolve(settled))
        try:
            await settled
        except asyncio.CancelledError:
            for future in futures:  # its items leave the queue rather than run for no one
                future.cancel()
            raise
        finally:
            disconnected.cancel()
        if not all(future.done() for future in futures):
            for future in futures:
                future.cancel()
            raise ApiError(CLIENT_CLOSED, "client closed the request", kind="cancelled")
        results = [_outcome(future) for future in futures]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            if any(isinstance(e, DeadlineExceeded) for e in errors):
                raise ApiError(504, "request timed out in the queue", kind="timeout")
            if any(isinstance(e, BatcherClosed) for e in errors):
                raise ApiError(503, "shutting down", kind="unavailable")
            raise ApiError(500, f"model failed: {errors[0]}", kind="server_error")
        return list(results)

    def stats(self) -> dict[str, Any]:
        cfg = self.config()
        totals = [b.stats for b in self.batchers]
        batches = sum(s.batches for s in totals)
        items = sum(s.batch_items for s in totals)
        started = sum(s.items_submitted - s.items_expired - s.items_cancelled for s in totals)
        wait = sum(s.queue_wait_seconds for s in totals)
        busy = sum(s.batch_seconds for s in totals)
        return {
            "model": self.name,
            "task": self.models[0].info.task if self.models else self.settings.task,
            "emulated": self.models[0].info.emulated if self.models else None,
            "ready": self.ready,
            "draining": self.draining,
            "stopping": self.stopping,
            "load_error": self.load_error,
            "queue_depth": self.queue_depth(),
            "in_flight_batches": sum(b.in_flight for b in self.batchers),
            "batches": batches,
            "items": items,
            "avg_batch_size": items / batches if batches else 0.0,
            "avg_queue_wait_ms": 1000 * wait / started if started else 0.0,
            "avg_batch_ms": 1000 * busy / batches if batches else 0.0,
            "items_rejected": sum(s.items_rejected for s in totals),
            "items_expired": sum(s.items_expired for s in totals),
            "items_cancelled": sum(s.items_cancelled for s in totals),
            "items_failed": sum(s.items_failed for s in totals),
            "batch_splits": sum(s.splits for s in totals),
            "requests": dict(self.requests),
            "config": cfg.model_dump(by_alias=True),
            "config_path": str(self.watcher.path),
            "config_error": self.watcher.error,
            "workers": [
                {
                    "device": m.info.device,
                    "queue_depth": b.queue_depth,
                    "in_flight_batches": b.in_flight,
                    "batch_limit": b.batch_limit,
                    "max_batch_cap": b.max_batch_cap,
                }
                for m, b in zip(self.models, self.batchers, strict=False)
            ],
        }

    def record(self, outcome: str, duration: float | None) -> None:
        self.requests[outcome] += 1
        self.telemetry.request_done(outcome, duration)


def _when_all(futures: Sequence[asyncio.Future[Any]]) -> asyncio.Future[None]:
    """A future resolved once every one of ``futures`` is done (however it ended)."""
    settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(futures)

    def one_done(_: asyncio.Future[Any]) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            _resolve(settled)

    for future in futures:
        future.add_done_callback(one_done)
    if not futures:
        _resolve(settled)
    return settled


def _outcome(future: asyncio.Future[Any]) -> Any:
    """A done future's result, or its exception as a value (as ``gather`` would return it)."""
    if future.cancelled():
        return asyncio.CancelledError()
    return future.exception() or future.result()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _client_gone(receive: Receive) -> None:
    """Return when the client disconnects (the body has been read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
