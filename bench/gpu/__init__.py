"""The GPU check: the runtime's GPU code paths measured on a real GPU in one run.

``python -m bench.gpu.check`` (behind ``make gpu-check``) runs five stages, each in a child
process with its own time budget: ``prepare`` (the machine, the models), ``equivalence``
(the runtime on the GPU against the CPU), ``memory`` (the start-up memory probe and the
out-of-memory split), ``profile`` (service times t(b) as emulated-accelerator profiles) and
``benchmark`` (served throughput and latency against the offline limit). ``--dry-run`` runs
the same code on the CPU at small sizes, with the memory figures faked at the boundary.
"""
