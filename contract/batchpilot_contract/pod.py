"""The runtime container as the operator runs it: port, paths and environment.

The runtime listens on :data:`PORT` and serves its probes and metrics on these paths; the
operator's pod template points its probes and scrape annotations at them and mounts the
batching ConfigMap at :data:`CONFIG_DIR`. Every runtime setting ``x_y`` also reads the
variable ``BATCHPILOT_X_Y`` (:func:`env_name`); the operator sets some of them from the spec,
and lets ``spec.env`` set only the tuning knobs :data:`TUNING_ENV`.
"""

from __future__ import annotations

from typing import Final

from batchpilot_contract.batching import CONFIGMAP_KEY

PORT: Final = 8080
"""The runtime's HTTP port (inference, probes and metrics)."""
PORT_NAME: Final = "http"
"""The name of that port on the container and the Service."""

LIVE_PATH: Final = "/v2/health/live"
"""200 once the server answers (the startup and liveness probes)."""
READY_PATH: Final = "/v2/health/ready"
"""200 while the model is loaded and the pod takes traffic (the readiness probe)."""
METRICS_PATH: Final = "/metrics"
"""The Prometheus text exposition (:mod:`batchpilot_contract.metrics`)."""

CONFIG_DIR: Final = "/etc/batchpilot"
"""Where the whole batching ConfigMap is mounted (never by ``subPath``, which the kubelet
does not refresh)."""
CONFIG_PATH: Final = f"{CONFIG_DIR}/{CONFIGMAP_KEY}"
"""The batching config file the runtime watches by default."""
CACHE_DIR: Final = "/var/cache/batchpilot"
"""Writable cache (an emptyDir) for what libraries write while loading a model (for example
the code of trustRemoteCode models): the root filesystem is read-only."""
PVC_ROOT: Final = "/mnt/pvc"
"""Where pvc:// claims are mounted, read-only: the runtime resolves ``pvc://claim/path`` to
``$BATCHPILOT_PVC_ROOT/claim/path``."""
RUN_AS_ID: Final = 10001
"""The runtime image's numeric user and group."""

ENV_PREFIX: Final = "BATCHPILOT_"
"""Every runtime setting ``x_y`` reads ``BATCHPILOT_X_Y``."""


def env_name(setting: str) -> str:
    """The variable of runtime setting ``setting`` (``max_inputs`` -> ``BATCHPILOT_MAX_INPUTS``)."""
    return ENV_PREFIX + setting.upper()


HOST_ENV: Final = env_name("host")
"""The listen address; a pod's own IP where the node runs pods as local processes."""
DTYPE_ENV: Final = env_name("dtype")
TRUST_REMOTE_CODE_ENV: Final = env_name("trust_remote_code")
PVC_ROOT_ENV: Final = env_name("pvc_root")
"""Where pvc:// claims are found (default :data:`PVC_ROOT`); not a flag."""
HF_MODULES_CACHE_ENV: Final = "HF_MODULES_CACHE"
"""Where transformers writes remote code (under :data:`CACHE_DIR` in a pod)."""

TUNING_ENV: Final = (
    "BATCHPILOT_THREADS",
    "BATCHPILOT_PIPELINE_DEPTH",
    "BATCHPILOT_NORMALIZE",
    "BATCHPILOT_MAX_BODY_BYTES",
    "BATCHPILOT_MAX_INPUTS",
    "BATCHPILOT_MAX_INPUT_CHARS",
    "BATCHPILOT_RELOAD_INTERVAL",
    "BATCHPILOT_LOG_LEVEL",
)
"""The variables of the runtime settings no spec field controls: the only ``BATCHPILOT_``
names ``spec.env`` may set."""
