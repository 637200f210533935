"""The tasks beyond text embedding and classification: their request bodies, parsing and
answers (``rerank``, ``image_classification``) and their routes (``routes``).

Kept apart from :mod:`batchpilot_runtime.api` and :mod:`batchpilot_runtime.app`, which hold the
text tasks, so that each module stays small; the app hands these tasks their requests.
"""
