"""meshgen: procedural shape families (procsynth, morphsynth, fractal2d).

Library entry points (no gRPC, no CLI):

- ``services.meshgen.registry``: ``get_family(name)``, ``list_families()``, ``register_family``;
  a family's ``generate_class(params, root_seed, class_index, instances)`` /
  ``generate_item(...)`` return ``GeneratedItem`` s (GLB or IFS JSON bytes + stats).
- ``services.meshgen.procsynth`` / ``morphsynth`` / ``fractal2d``: the algorithms on plain arrays
  and trimesh meshes (``fractal2d.ifs_variants`` gives FractalDB's 25 weight variants).
- ``services.meshgen.dataset``: ``generate_dataset`` / ``iter_generate_dataset`` / ``write_class``
  write ``meshes/<dataset_id>/...`` and its manifest, resumably.
- ``services.meshgen.job``: ``run_job(spec, store, index=, count=, progress=)``.
- ``services.meshgen.servicer``: ``register(server, store)`` for ``flatland.v1.Meshgen``.
- ``services.meshgen.contact_sheet``: quick renders of a few classes per family.
"""
