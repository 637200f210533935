"""batchpilot runtime: a dynamic-batching inference server."""
