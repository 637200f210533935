"""A local Kubernetes cluster for tests and the demo: built from Go modules, no Docker."""
