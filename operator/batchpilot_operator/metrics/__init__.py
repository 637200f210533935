"""Observation: scrape every runtime pod's ``/metrics`` and turn two scrapes into a window.

The runtime exports the metrics contract (:mod:`batchpilot_contract.metrics`: ``batchpilot_*``
names, base units, fixed histogram buckets identical on every pod). This package

* scrapes a set of pods concurrently (:mod:`.scrape`, :func:`scrape_pods`: per-pod timeout,
  a concurrency limit, a pod that does not answer is recorded as *missing*, never as zero
  load),
* parses one pod's text with prometheus_client's parser (:mod:`.parse`,
  :func:`parse_metrics`),
* and compares two successive scrapes (:mod:`.observation`, :func:`observe`) into an
  :class:`Observation`: counter and histogram deltas over the window (a pod whose counters
  went backwards restarted; its counters since the restart are the window's), quantiles of
  histograms summed across pods (:mod:`.histogram`, interpolated as PromQL's
  ``histogram_quantile``), the service-time profile ``t(b) = a + c*b`` fitted on per-pod
  (mean batch size, mean batch duration) points (:mod:`.servicetime`), and the batching
  config each pod reports in force.

Nothing here talks to Kubernetes; the caller maps pods to URLs and keeps the previous
:class:`Scrape` (and, optionally, a :class:`ServiceHistory` of earlier windows' points)
between ticks. The names below are the package's interface; import them from here.
"""

from __future__ import annotations

from batchpilot_operator.metrics.histogram import (
    Histogram,
    fraction_at_most,
    histogram_quantile,
    sum_histograms,
)
from batchpilot_operator.metrics.observation import OUTCOME_OK, Observation, observe
from batchpilot_operator.metrics.parse import MetricsParseError, PodConfig, PodSample, parse_metrics
from batchpilot_operator.metrics.scrape import Scrape, scrape_pods
from batchpilot_operator.metrics.servicetime import (
    ServiceHistory,
    ServicePoint,
    ServiceTimeFit,
    fit_service_time,
)

__all__ = [
    "OUTCOME_OK",
    "Histogram",
    "MetricsParseError",
    "Observation",
    "PodConfig",
    "PodSample",
    "Scrape",
    "ServiceHistory",
    "ServicePoint",
    "ServiceTimeFit",
    "fit_service_time",
    "fraction_at_most",
    "histogram_quantile",
    "observe",
    "parse_metrics",
    "scrape_pods",
    "sum_histograms",
]
