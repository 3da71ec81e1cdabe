"""The conductor: runs an experiment's stages, in-process or through their services.

It stands above the stages (which know nothing of each other beyond their ``api``
modules) and below the adapters (CLI, cluster manifests, gRPC clients):

- :mod:`.runner` — ``run_experiment`` / ``run_stage_with_progress``: every stage of a
  spec in order, with progress bars and job metrics, then the report;
- :mod:`.remote` — the same through the four gRPC services (``flatland run --remote``);
- :mod:`.readiness` — what a stage still waits for in the store (``flatland wait``);
- :mod:`.workplan` — how batch work splits into Indexed-Job items (shared by the
  manifests and the jobs);
- :mod:`.costplan` — images, bytes and compute hours of a spec (``flatland plan``).
"""
