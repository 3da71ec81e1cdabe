"""How to render: the drawing back-ends, each turning a plain-data record into pixels.

- :mod:`.gl` — the OpenGL scene renderer for meshes (pyrender; OSMesa on CPU, EGL on GPU);
- :mod:`.fractal` — the batched chaos-game rasteriser for IFS fractals (numpy or torch);
- :mod:`.scenes`, :mod:`.noise` — the noise-textured ellipsoid scenes and their textures;
- :mod:`.planar` — 2D variants (flip, planar affine map) of a rendered view (FlatWorld).

A new renderer (a differentiable rasteriser, a volume renderer) is a new module here;
the family that uses it calls it from its sample writer in :mod:`services.render.kinds`.
"""
