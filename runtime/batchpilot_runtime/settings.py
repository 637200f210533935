"""Start-up settings of the runtime: defaults, then ``BATCHPILOT_*`` variables, then flags.

The batching settings (``--max-batch-size`` and friends) are only the starting point: the
config file (the ConfigMap contract, :mod:`batchpilot_contract.batching`) overrides them when it
exists, and is hot-reloaded. Each field ``x_y`` reads ``BATCHPILOT_X_Y``
(:func:`batchpilot_contract.pod.env_name`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from batchpilot_contract import pod
from batchpilot_contract.batching import BatchingConfig
from batchpilot_contract.lifecycle import (
    BODY_TIMEOUT_SECONDS,
    DRAIN_DELAY_SECONDS,
    GRACEFUL_TIMEOUT_SECONDS,
)
from batchpilot_runtime.backends import TASKS, Task

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path(pod.CONFIG_PATH)


@dataclass(frozen=True)
class Settings:
    """Everything fixed at start-up. Each field ``x_y`` reads ``BATCHPILOT_X_Y``/``--x-y``."""

    model: str
    task: Task = "embedding"
    name: str | None = None
    config: Path = DEFAULT_CONFIG_PATH
    host: str = "0.0.0.0"  # a server in a pod listens on every interface
    port: int = pod.PORT
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    normalize: bool = True
    threads: int | None = None
    pipeline_depth: int = 2
    max_batch_size: int = BatchingConfig().max_batch_size
    max_wait_ms: float = BatchingConfig().max_wait_ms
    max_queue: int = BatchingConfig().max_queue
    request_timeout_ms: float = BatchingConfig().request_timeout_ms
    max_body_bytes: int = 8 * 1024 * 1024
    max_inputs: int = 2048
    max_input_chars: int = 100_000
    max_image_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    body_timeout: float = BODY_TIMEOUT_SECONDS
    drain_delay: float = DRAIN_DELAY_SECONDS
    graceful_timeout: int = GRACEFUL_TIMEOUT_SECONDS
    reload_interval: float = 0.5
    log_level: str = "info"
    docs: bool = False

    @property
    def served_name(self) -> str:
        """The model name clients use: ``--name``, else the last part of the model URI."""
        if self.name:
            return self.name
        tail = self.model.split("@", 1)[0].rstrip("/")
        return tail.rsplit("/", 1)[-1] or "model"

    def base_config(self) -> BatchingConfig:
        """The batching config from settings alone (the config file may override it)."""
        return BatchingConfig(
            max_batch_size=self.max_batch_size,
            max_wait_ms=self.max_wait_ms,
            max_queue=self.max_queue,
            request_timeout_ms=self.request_timeout_ms,
        )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_settings(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and flags ``argv``."""
    parser = build_parser(env)
    args = parser.parse_args(argv)
    if args.body_timeout <= 0:
        parser.error(f"--body-timeout: {args.body_timeout}; must be > 0")
    if args.drain_delay < 0:
        parser.error(f"--drain-delay: {args.drain_delay}; must be >= 0")
    if args.graceful_timeout < 0:
        parser.error(f"--graceful-timeout: {args.graceful_timeout}; must be >= 0")
    return Settings(**vars(args))


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The runtime's flags, one per :class:`Settings` field, with defaults from ``env``
    (default ``os.environ``) over the code's. A bad variable exits with a usage error."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="batchpilot-runtime",
        description="Serve a transformers model with dynamic batching. Every flag can also be "
        "set with a BATCHPILOT_<NAME> environment variable (flags win).",
    )
    helps = {
        "model": "model URI: /path, file:///path, hf://org/name[@revision] (local cache), "
        "pvc://claim/path (under $BATCHPILOT_PVC_ROOT), or emulated://PROFILE (an emulated "
        "accelerator: batches are timed waits from a shipped service-time profile)",
        "task": "what the model does",
        "name": "served model name (default: the last part of the model URI)",
        "config": "batching config file (ConfigMap contract), watched for changes",
        "host": "listen address",
        "port": "listen port",
        "device": "auto (every GPU, else CPU), cpu, cuda or cuda:N",
        "dtype": "auto (float16 on GPU, float32 on CPU), float32, float16 or bfloat16",
        "trust_remote_code": "let the model repository run its own code",
        "normalize": "L2-normalise embeddings",
        "threads": "torch intra-op threads (default: one per core)",
        "pipeline_depth": "batches in flight per worker (2 overlaps tokenising and forward)",
        "max_batch_size": "initial maxBatchSize (the config file overrides)",
        "max_wait_ms": "initial maxWaitMs (the config file overrides)",
        "max_queue": "initial maxQueue (the config file overrides)",
        "request_timeout_ms": "initial requestTimeoutMs (the config file overrides)",
        "max_body_bytes": "largest request body; larger is 413",
        "max_inputs": "most inputs in one request; more is 413",
        "max_input_chars": "longest input text; longer is 413",
        "max_image_bytes": "largest encoded image (image tasks); larger is 413",
        "max_image_pixels": "most pixels in an image (width times height, read before "
        "decoding); more is 413",
        "reload_interval": "seconds between checks of the config file",
        "log_level": "debug, info, warning or error",
        "docs": "serve the interactive API docs at /docs and /redoc (they load scripts from a "
        "CDN; /openapi.json is always served)",
        "body_timeout": "seconds a request body may take to arrive; slower is 408",
        "drain_delay": "seconds to keep serving after SIGTERM, unready, while endpoints drop "
        "the pod (skipped if the model never got ready)",
        "graceful_timeout": "then, seconds accepted requests get to finish after SIGTERM; what is "
        "left then is cancelled",
    }
    defaults = {f.name: f.default for f in fields(Settings)}
    for f in fields(Settings):
        kind = _field_type(f.name)
        variable = pod.env_name(f.name)
        raw = env.get(variable)
        default: Any = defaults[f.name]
        if raw is not None and raw != "":
            try:
                default = _bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                parser.error(f"{variable}: {exc}")
        help_text = helps.get(f.name, "")
        if kind is bool:
            parser.add_argument(
                _flag(f.name),
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_text,
            )
            continue
        required = f.name == "model" and not isinstance(default, str)
        shown = default is not None and not required
        parser.add_argument(
            _flag(f.name),
            type=kind,
            default=None if required else default,
            required=required,
            help=help_text + (f" (default: {default})" if shown else ""),
            choices=TASKS if f.name == "task" else None,
        )
    return parser


def _field_type(name: str) -> Any:
    types: dict[str, Any] = {
        "config": Path,
        "port": int,
        "threads": int,
        "pipeline_depth": int,
        "max_batch_size": int,
        "max_queue": int,
        "max_body_bytes": int,
        "max_inputs": int,
        "max_input_chars": int,
        "max_image_bytes": int,
        "max_image_pixels": int,
        "max_wait_ms": float,
        "request_timeout_ms": float,
        "reload_interval": float,
        "body_timeout": float,
        "drain_delay": float,
        "graceful_timeout": int,
        "trust_remote_code": bool,
        "normalize": bool,
        "docs": bool,
    }
    return types.get(name, str)


def resolve_model_path(uri: str, env: Mapping[str, str] | None = None) -> Path:
    """A local directory for a model URI; ``hf://`` reads the local Hugging Face cache only."""
    env = os.environ if env is None else env
    if uri.startswith("hf://"):
        repo, _, revision = uri.removeprefix("hf://").partition("@")
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            cached = snapshot_download(repo, revision=revision or None, local_files_only=True)
        except LocalEntryNotFoundError:
            raise FileNotFoundError(
                f"{uri}: not in the local Hugging Face cache (models are never downloaded at "
                "start; put it in the cache or mount it and pass its path)"
            ) from None
        return Path(cached)
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://"))
    elif uri.startswith("pvc://"):
        path = _claim_path(uri, Path(env.get(pod.PVC_ROOT_ENV, pod.PVC_ROOT)))
    elif "://" in uri:
        raise ValueError(f"{uri}: unsupported scheme; use a path, file://, hf:// or pvc://")
    else:
        path = Path(uri)
    if not path.is_dir():
        raise FileNotFoundError(f"{uri}: no model directory at {path}")
    return path


def _claim_path(uri: str, root: Path) -> Path:
    """``root/claim/path`` for ``pvc://claim/path``, resolved; refused if it leaves the claim.

    Resolved before the check, so that neither a ``..`` segment nor a symlink reaches another
    claim or the rest of the file system.
    """
    claim, _, rest = uri.removeprefix("pvc://").partition("/")
    if claim in ("", ".", ".."):
        raise ValueError(f"{uri}: no claim name; use pvc://claim/path")
    base = (root / claim).resolve()
    path = (base / rest).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{uri}: the path leads out of claim {claim!r} (by '..' or a symlink)")
    return path
