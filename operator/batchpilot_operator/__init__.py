"""batchpilot operator: reconciles BatchedModels and tunes their batching."""
