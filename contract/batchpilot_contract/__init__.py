"""batchpilot contract: what the operator and the runtime pods agree on, defined once.

Both sides import this package, and it imports neither of them nor torch (only pydantic):

- :mod:`.batching`: the batching config document (the ConfigMap ``<name>-batching``, key
  ``batching.json``), its fields, defaults and bounds;
- :mod:`.metrics`: the metric names, label names and values, and histogram buckets every
  runtime pod exports on ``GET /metrics``;
- :mod:`.pod`: the runtime container's port, probe and metrics paths, mount paths, the
  ``BATCHPILOT_*`` variables the operator sets, and the runtime pods' labels and annotations;
- :mod:`.lifecycle`: how long a runtime pod takes to stop (the pod's grace period covers it).
"""
