"""batchpilot runtime: a dynamic-batching inference server.

``batchpilot-runtime --model URI --task TASK`` serves a transformers model (embedding,
classification, rerank, image-classification or multimodal-embedding) over HTTP (OpenAI-compatible
``/v1/embeddings``, ``/v1/classify``, ``/v1/rerank``, Open Inference Protocol v2,
``/stats``, ``/metrics``), grouping concurrent requests into batches (:mod:`.batcher`) whose
size and wait come from a hot-reloaded config file (:mod:`.reload`; its schema, the metric
names and the pod's paths are the ``batchpilot_contract`` package's, which the operator
imports too).
"""
