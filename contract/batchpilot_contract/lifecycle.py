"""How long a runtime pod takes to stop: the runtime's defaults, and the pod's grace period.

On SIGTERM the runtime turns unready at once and keeps serving for ``DRAIN_DELAY_SECONDS``
while the Service's endpoints drop the pod (a pod's endpoint is removed at about the time its
containers get SIGTERM, and kube-proxy or an ingress lags by seconds). Then it stops accepting
connections and gives what was accepted at most ``GRACEFUL_TIMEOUT_SECONDS`` to finish; then it
cancels what is left and exits. The pod's ``terminationGracePeriodSeconds`` must cover both,
or the kubelet kills the process (137) while it still finishes accepted work. The delay is the
runtime's own rather than a ``preStop`` hook: the image has no shell nor ``sleep`` and a
read-only root file system.
"""

from __future__ import annotations

import math
from typing import Final

DRAIN_DELAY_SECONDS: Final = 5.0
"""Serving on after SIGTERM, unready, while the endpoints drop the pod."""

BODY_TIMEOUT_SECONDS: Final = 30.0
"""The most time a request body may take to arrive, from the start of the read."""

GRACEFUL_TIMEOUT_SECONDS: Final = 45
"""The most time accepted requests get to finish once the server stops accepting. Above the
body timeout and the default request timeout (30 s each), so that a request accepted before
shutdown gets its own answer (its result, 408 or 504) rather than a cut connection."""

SHUTDOWN_MARGIN_SECONDS: Final = 10.0
"""Headroom in the pod's grace period for releasing the models and exiting."""


def termination_grace_seconds(
    drain_delay: float = DRAIN_DELAY_SECONDS, graceful_timeout: float = GRACEFUL_TIMEOUT_SECONDS
) -> int:
    """The pod's ``terminationGracePeriodSeconds`` for a runtime stopping with these bounds:
    the drain delay, then the graceful bound, then the margin for releasing the models."""
    return math.ceil(drain_delay + graceful_timeout + SHUTDOWN_MARGIN_SECONDS)


EXIT_MODEL_REFUSED: Final = 3
"""The runtime's exit status when the model cannot serve its task (a reranker with more than
one output, a multimodal embedder without an image tower): restarting will not help. The
runtime writes why to :data:`TERMINATION_MESSAGE_PATH`, and the operator's ``Degraded``
condition shows :data:`MODEL_REFUSED_REASON` with that message."""

MODEL_REFUSED_REASON: Final = "ModelRefused"
"""The ``Degraded`` reason of a BatchedModel whose runtime exited :data:`EXIT_MODEL_REFUSED`."""

TERMINATION_MESSAGE_PATH: Final = "/dev/termination-log"
"""Kubernetes' default ``terminationMessagePath``, which the pod template keeps: what the
runtime writes there becomes the container's ``lastState.terminated.message``."""
