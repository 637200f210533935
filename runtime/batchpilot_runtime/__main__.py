"""``batchpilot-runtime``: serve a model with dynamic batching (``--help`` lists the flags)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError

from batchpilot_contract.lifecycle import EXIT_MODEL_REFUSED, TERMINATION_MESSAGE_PATH
from batchpilot_runtime.app import Loader, Runtime, create_app
from batchpilot_runtime.backends import ModelRefused, emulated
from batchpilot_runtime.settings import Settings, parse_settings, resolve_model_path

log = logging.getLogger("batchpilot_runtime")


class _Server(uvicorn.Server):
    """uvicorn, draining the Kubernetes way on SIGTERM or SIGINT.

    Readiness turns false at once, and the server keeps serving, new connections too, for
    ``drain_delay`` seconds while the endpoints drop the pod; only then does uvicorn stop
    accepting and finish what it accepted (bounded by ``timeout_graceful_shutdown``). A second
    signal ends the delay at once; a further SIGINT forces the exit, as in plain uvicorn.
    """

    runtime: Runtime | None = None
    drain_delay = 0.0
    _drain_until: float | None = None
    _drain_logged = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        runtime = self.runtime
        first = self._drain_until is None and not self.should_exit
        # A model that never got ready was never in the endpoints: nothing to wait for.
        delay = self.drain_delay if runtime is not None and runtime.ready else 0.0
        if runtime is not None:
            runtime.draining = True
        if first and delay > 0:
            # Only flags here (this runs in a signal handler); the main loop's tick acts on them.
            self._drain_until = time.monotonic() + delay
            self._captured_signals.append(sig)
        else:
            super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            # A drained SIGTERM is a clean exit (0); uvicorn would re-raise it after shutdown.
            while sig in self._captured_signals:
                self._captured_signals.remove(sig)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self._drain_logged:
            self._drain_logged = True
            log.info(
                "shutting down: unready; serving on for %g s while endpoints update",
                self.drain_delay,
            )
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            self.should_exit = True
        return await super().on_tick(counter)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    try:
        settings.base_config()
    except ValidationError as exc:
        print(f"batchpilot-runtime: invalid batching setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Models are read from local files only, never fetched from a hub at start-up.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # OpenMP threads that spin while waiting steal the cores from the tokeniser, the event
    # loop and any neighbour; sleeping waiters cost nothing measurable and hold up far better
    # on shared CPUs. Must be set before torch starts its thread pool.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if settings.model.startswith(emulated.SCHEME):
        try:
            emulated.load_profile(settings.model)
        except emulated.ProfileError as exc:
            log.error("%s", exc)
            return 2
        return serve(settings, lambda: emulated.load_emulated(settings.model, settings.task))
    try:
        path = resolve_model_path(settings.model)
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return serve(settings, transformers_loader(settings, path))


def transformers_loader(settings: Settings, path: Path) -> Loader:
    """The loader of a real model: one torch worker per device."""
    from batchpilot_runtime.backends import hf  # torch: imported only to serve a real model

    hf.configure_threads(settings.threads)

    def load() -> list[hf.TransformersModel]:
        return hf.load_models(
            path,
            settings.task,
            device=settings.device,
            dtype=settings.dtype,
            trust_remote_code=settings.trust_remote_code,
        )

    return load


def load_failure_status(
    failures: Sequence[BaseException], message_path: Path = Path(TERMINATION_MESSAGE_PATH)
) -> int:
    """The exit status after a failed load: :data:`EXIT_MODEL_REFUSED` when the model cannot
    serve its task (with why written to the pod's termination message), else 1."""
    refused = next((f for f in failures if isinstance(f, ModelRefused)), None)
    if refused is None:
        return 1
    # Only where the kubelet made the file: outside a pod there is no one to read it.
    if message_path.is_file():
        with contextlib.suppress(OSError):
            message_path.write_text(f"{MODEL_REFUSED}: {refused}"[:4096])
    return EXIT_MODEL_REFUSED


MODEL_REFUSED = "the model cannot serve its task"


def serve(settings: Settings, load: Loader) -> int:
    """Run the server until SIGTERM; 0 after a clean drain, 1 if the model failed to load
    (:data:`EXIT_MODEL_REFUSED` if it cannot serve its task)."""
    failures: list[BaseException] = []

    def on_fatal(exc: BaseException) -> None:
        failures.append(exc)
        server.should_exit = True

    app = create_app(settings, load, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        # Bounded, so that a stalled client cannot hold the pod past its grace period: what
        # is still running then is cancelled, and the process exits.
        timeout_graceful_shutdown=settings.graceful_timeout,
    )
    runtime: Runtime = app.state.runtime
    server = _Server(config)
    server.runtime = runtime
    server.drain_delay = settings.drain_delay
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises a SIGINT once it has shut down
        if not runtime.load_running():
            raise
        code = 130
    else:
        code = load_failure_status(failures) if failures else 0
    if runtime.load_running():
        # A signal came while the model was loading. The server has shut down cleanly and
        # never accepted inference (it was not ready); only the load thread is left, and it
        # cannot be interrupted. Exiting the interpreter normally would finalise it under
        # that thread, in the middle of torch or file I/O, which can crash at exit; so the
        # logs are flushed and the process ends here, without waiting for the load.
        log.info("exiting during the model load, without waiting for it")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
