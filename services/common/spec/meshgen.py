"""Parameters of the shape families (meshgen). Every range has a documented default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.spec.base import StrictModel

#: Upper bound of ``max_rejections`` and ``max_attempts``: tries for one class before giving up
#: (100,000 fractal systems are about 25 minutes of search on one core).
MAX_TRIES = 100_000

PRIMITIVES = ("cube", "sphere", "cone", "cylinder", "torus")


class Range(StrictModel):
    """A closed interval [low, high] that a parameter is drawn from uniformly."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class IntRange(StrictModel):
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self):
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class ProcSynthParams(StrictModel):
    """ProcSynthDB, Algorithm 1: random unions of primitives with random modifiers.

    Why the defaults make ``max_size`` matter. A candidate's largest bounding-box extent is about the
    span of its primitive centres plus the half-sizes of the outermost primitives. With ``v = 3`` and
    ``w = 5`` a candidate has ``E[N] = (v+1)/2 · 5 types · w/2 = 25`` primitives; the span of ``N``
    centres drawn uniformly from ``[-a, a]`` is ``2a(N-1)/(N+1) ≈ 1.85a``, the outermost half-sizes
    (``size_range`` 0.5..3, rotated) add about 2 and the largest of the three axes about 0.5, so the
    median extent is ``≈ 1.85a + 2.5`` (measured: 6.5 at ``a = 2``, 9.7 at ``a = 3.75``, 10.2 at
    ``a = 4``). No candidate can exceed ``2a`` plus the largest primitive's diameter (a 3-unit cube's
    diagonal, 5.2): with the former ``a = 2`` that is 9.2 < ``max_size = 10`` and the size check never
    fired (0 of 40 classes). ``position_range = ±3.75`` puts the median candidate just under
    ``max_size``: about a quarter of the draws are rejected, mostly the busiest and most spread-out
    unions (accepted shapes average 23 primitives instead of 25), and the accepted extents fill the
    range up to ``max_size``, as the proposal's size check intends.
    """

    family: Literal["procsynth"] = "procsynth"
    v: int = Field(default=3, ge=1, le=20, description="Rounds p are drawn from 1..v.")
    w: int = Field(default=5, ge=1, le=50, description="Each round adds 0..w instances of every primitive type.")
    max_size: float = Field(
        default=10.0, gt=0,
        description="Largest allowed bounding-box extent of a shape; larger shapes are rejected and redrawn. "
        "With the default ranges about a quarter of the draws are (median candidate extent ≈ 1.85·position_range.high + 2.5 ≈ 9.7).",
    )
    primitives: list[Literal["cube", "sphere", "cone", "cylinder", "torus"]] = Field(
        default_factory=lambda: list(PRIMITIVES), min_length=1, max_length=100, description="Primitive types used."
    )
    size_range: Range = Field(
        default_factory=lambda: Range(low=0.5, high=3.0),
        description="Primitive dimensions (world units): box edge lengths, sphere/cylinder/cone diameters and heights, torus outer diameter.",
    )
    torus_minor_ratio: Range = Field(
        default_factory=lambda: Range(low=0.15, high=0.45), description="Torus tube radius as a fraction of its major radius."
    )
    position_range: Range = Field(
        default_factory=lambda: Range(low=-3.75, high=3.75),
        description="Primitive centre coordinates (world units). ±3.75 puts the median union's extent just under "
        "the default max_size, so the size check rejects about a quarter of the draws (see the class docstring).",
    )
    segments_range: IntRange = Field(default_factory=lambda: IntRange(low=8, high=32), description="Segment counts of round primitives.")
    modifier_probs: tuple[float, float, float] = Field(
        default=(0.5, 0.25, 0.25), description="Probabilities of (as is, wireframe, subdivided) per primitive."
    )
    wire_thickness_range: Range = Field(default_factory=lambda: Range(low=0.02, high=0.08), description="Radius of wireframe tubes (world units).")
    wire_sides: int = Field(default=6, ge=3, le=32, description="Facets around each wireframe tube.")
    stretch_factors: list[float] = Field(
        default_factory=lambda: [1.5, 2.0], max_length=100, description="Variants: the base mesh stretched by each factor along one random axis."
    )
    max_rejections: int = Field(default=1000, ge=1, le=MAX_TRIES, description="Give up (with an error) after this many rejected draws for one class.")

    @model_validator(mode="after")
    def _check(self):
        p = self.modifier_probs
        if any(x < 0 for x in p) or abs(sum(p) - 1.0) > 1e-6:
            raise ValueError(f"modifier_probs must be non-negative and sum to 1, got {p}")
        if self.size_range.low <= 0:
            raise ValueError("size_range.low must be > 0")
        if self.segments_range.low < 3 or self.segments_range.high > 256:
            raise ValueError(
                f"segments_range must lie in 3..256, got {self.segments_range.low}..{self.segments_range.high}"
            )
        if self.torus_minor_ratio.low <= 0 or self.torus_minor_ratio.high >= 1:
            raise ValueError("torus_minor_ratio must lie in (0, 1)")
        if self.wire_thickness_range.low <= 0:
            raise ValueError("wire_thickness_range.low must be > 0")
        if self.size_range.low >= self.max_size:
            raise ValueError(
                f"max_size ({self.max_size}) is not larger than the smallest primitive size "
                f"({self.size_range.low}); no shape could ever be accepted"
            )
        if any(f <= 0 for f in self.stretch_factors):
            raise ValueError("stretch_factors must be > 0")
        return self

    @property
    def meshes_per_class(self) -> int:
        return 1 + len(self.stretch_factors)


class GPKernelTerm(StrictModel):
    """One Gaussian term scale²·exp(-|x-y|²/length_scale²) of a GP kernel (positions in units of the mesh size)."""

    scale: float = Field(
        gt=0,
        description="Marginal standard deviation this term adds to each component (shape: in units of the mesh "
        "size, i.e. its bounding-box diagonal; albedo: RGB units on [0,1]).",
    )
    length_scale: float = Field(gt=0, description="Length-scale, in units of the mesh size (bounding-box diagonal).")


class MorphSynthParams(StrictModel):
    """MorphSynthDB: Gaussian-process morphs (shape and per-vertex albedo) of procsynth meshes.

    Class ``c`` is one new shape: procsynth class ``c % base_classes`` deformed by one
    class-level draw of the shape and albedo Gaussian processes, seeded by the class
    (so classes ``c`` and ``c + base_classes`` share a base but not a morph). Its
    images vary in pose and illumination; its instances are the same mesh unless
    ``instance_scale`` > 0 adds a smaller instance-level draw on top.

    Mapping of the proposal's parameters (b_s = 50, c_s = 300, b_a = 0.05, c_a = 0.2).
    The kernel is a Gaussian, amplitude b and length-scale c:
    k(x, y) = b² exp(-‖x - y‖² / c²), i.e. ``scale`` = b, ``length_scale`` = c of a
    :class:`GPKernelTerm` (b is the standard deviation of each component).

    * Why b is a standard deviation, not a variance. In scalismo, whose kernels the
      single-scan 3DMM of Sutherland et al. uses, ``GaussianKernel(c) * b`` multiplies
      the kernel by b, a variance. Read that way, b_s = 50 gives a standard deviation
      of sqrt(50) ≈ 7.1 against a length-scale of 300: a typical strain (the
      standard deviation of the field's gradient, std·√2 / length-scale) of 0.03, a
      3 % warp that leaves every object as it was at any mesh scale, which cannot
      "obtain new shapes". Read as a standard deviation, the strain is
      50·√2 / 300 ≈ 0.24: visible bends, shears and bulges.
    * Shape units. b_s / c_s is unit-free; c_s needs a length unit. c_s = 300 in
      procsynth's own units (objects of at most ``max_size`` = 10 per axis) would make
      the field constant over the object (a rigid shift), so the figures are
      millimetres, for an object of about one metre: D_ref = 1000 mm, where D is the
      bounding-box diagonal (procsynth's median D is about 10.6 world units, so one
      world unit reads as about 10 cm). Hence ``scale`` = b_s / D_ref = 0.05 and
      ``length_scale`` = c_s / D_ref = 0.3, both in units of the mesh's own D.
    * Albedo units. RGB on [0, 1] has no length unit: ``scale`` = b_a = 0.05 (RGB
      standard deviation). c_a = 0.2 cannot be millimetres (0.2 mm is finer than any
      vertex spacing: per-vertex noise), and as a colour-space length-scale, as in
      Sutherland et al.'s RGB kernel, it would give a uniform-grey base one constant
      offset; so ``length_scale`` = c_a = 0.2 of the mesh size D, a few colour patches
      per object.

    The same derivation, with contact sheets, is in docs/morphsynth.md.
    """

    family: Literal["morphsynth"] = "morphsynth"
    base: ProcSynthParams = Field(default_factory=ProcSynthParams, description="The procsynth family the base meshes come from.")
    base_classes: int = Field(
        default=100, ge=1, le=100_000,
        description="Use the first N procsynth classes as bases: class c morphs procsynth class c % N (the proposal: 100).",
    )
    max_vertices: int = Field(default=5000, ge=100, le=200_000, description="Quadric decimation bound on base-mesh vertices.")
    nystrom_points: int = Field(default=300, ge=10, le=5000, description="Surface points for the Nyström approximation.")
    eigen_components: int = Field(default=50, ge=1, le=5000, description="Leading eigenfunctions kept in the KL expansion.")
    shape_kernel: list[GPKernelTerm] = Field(
        default_factory=lambda: [GPKernelTerm(scale=0.05, length_scale=0.3)],
        min_length=1, max_length=100,
        description="Class-level deformation kernel terms (sum), applied per xyz component. Default: the proposal's "
        "b_s=50, c_s=300 (mm on an object of D ≈ 1 m) as scale 0.05, length-scale 0.3 of the mesh size "
        "(derivation in the MorphSynthParams docstring and docs/morphsynth.md).",
    )
    albedo_kernel: list[GPKernelTerm] = Field(
        default_factory=lambda: [GPKernelTerm(scale=0.05, length_scale=0.2)], min_length=1, max_length=100,
        description="Class-level albedo offset kernel terms (sum), per RGB channel. Default: the proposal's b_a=0.05 as the "
        "RGB standard deviation and c_a=0.2 as the length-scale in units of the mesh size.",
    )
    instance_scale: float = Field(
        default=0.0, ge=0, lt=1,
        description="Instance-level morph on top of the class's, as a fraction of every kernel scale (shape and albedo). "
        "0 (default): all instances of a class are the same mesh and differ only in the pose and lighting render draws.",
    )
    albedo_channel_correlation: float = Field(default=0.5, ge=0, le=1, description="Correlation between RGB offset channels.")
    base_albedo: tuple[float, float, float] = Field(default=(0.6, 0.6, 0.6), description="Albedo before the offset field (RGB in [0,1]).")

    @model_validator(mode="after")
    def _check(self):
        if self.eigen_components > self.nystrom_points:
            raise ValueError(
                f"eigen_components ({self.eigen_components}) must be <= nystrom_points ({self.nystrom_points})"
            )
        if any(not 0.0 <= c <= 1.0 for c in self.base_albedo):
            raise ValueError(f"base_albedo components must lie in [0, 1], got {self.base_albedo}")
        return self


class Fractal2DParams(StrictModel):
    """FractalDB: iterated function systems searched by filling rate."""

    family: Literal["fractal2d"] = "fractal2d"
    maps_range: IntRange = Field(default_factory=lambda: IntRange(low=2, high=7), description="Number of affine maps N per system.")
    coefficient_range: Range = Field(default_factory=lambda: Range(low=-1.0, high=1.0), description="Each map's six coefficients are uniform in this range.")
    filling_rate: float = Field(
        default=0.2, gt=0, lt=1,
        description="Fraction of the search image's pixels (padding included) the point cloud must hit for a system "
        "to be accepted (FractalDB: 0.2). At most min(search_points, (search_size - 2 search_pad + 1)²) / "
        "search_size² can be reached; a higher value is refused.",
    )
    search_points: int = Field(
        default=100_000, ge=1000, le=10_000_000,
        description="Points the filling rate is measured on, the origin first (FractalDB's numof_point: 100,000).",
    )
    search_size: int = Field(
        default=512, ge=32, le=2048,
        description="Image side (pixels) the filling rate is measured on (FractalDB's param search: 512).",
    )
    search_pad: int = Field(
        default=6, ge=0, le=256,
        description="Border (pixels) left free on every side of the search image: each axis of the cloud is mapped "
        "to pixels search_pad..search_size - search_pad, truncated (FractalDB: 6).",
    )
    weight_step: float = Field(default=0.4, gt=0, lt=1, description="w: instances scale one coefficient by 1±w, 1±2w.")
    flips: int = Field(default=4, ge=1, le=4, description="Flip variants per instance (none, horizontal, vertical, both).")
    max_attempts: int = Field(
        default=1000, ge=1, le=MAX_TRIES,
        description="Give up (with an error) after this many rejected systems for one class. At the defaults one "
        "system in 30 to 50 is accepted, so 1,000 rejections in a row (~10-15 s of search per core) mean the "
        "threshold is out of reach; raise it with filling_rate.",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.maps_range.low < 1:
            raise ValueError(f"maps_range.low must be >= 1, got {self.maps_range.low}")
        if self.maps_range.high > 64:
            raise ValueError(f"maps_range.high must be <= 64, got {self.maps_range.high}")
        if 2 * self.search_pad >= self.search_size:
            raise ValueError(f"search_pad ({self.search_pad}) must be less than half of search_size ({self.search_size})")
        inner = self.search_size - 2 * self.search_pad + 1 if self.search_pad > 0 else self.search_size
        reachable = min(self.search_points, inner * inner) / self.search_size**2
        if self.filling_rate > reachable:
            raise ValueError(
                f"filling_rate ({self.filling_rate}) can never be reached: search_points={self.search_points} points "
                f"cover at most {reachable:.3f} of a search_size={self.search_size} image with "
                f"search_pad={self.search_pad}; lower filling_rate or raise search_points"
            )
        return self


class FitLossWeights(StrictModel):
    """Weights of the fitting losses (0 switches a loss off). Defaults: PyTorch3D's mesh-fitting tutorials, except edge
    and Laplacian at 0.2 instead of 1.0: in a 300-step Adam fit they let the sphere carve concavities and thin the
    bridges between a procsynth shape's separate parts (held-out IoU 0.902 against 0.893, docs/fitting.md)."""

    silhouette: float = Field(default=1.0, ge=0, description="Mean squared difference of rendered and target silhouettes.")
    chamfer: float = Field(default=1.0, ge=0, description="Chamfer distance to the target surface (mesh targets only).")
    edge: float = Field(default=0.2, ge=0, description="Mean squared edge length (keeps the mesh even).")
    normal: float = Field(default=0.01, ge=0, description="1 - cos between normals of faces sharing an edge.")
    laplacian: float = Field(default=0.2, ge=0, description="Mean norm of the uniform Laplacian (smoothness).")
    quadric: float = Field(default=0.0, ge=0, description="Squared distance to the target's face planes near each vertex "
                           "(mesh targets only; sharp detail).")


class FitParams(StrictModel):
    """Fitting an ico-sphere to silhouettes or to a mesh by differentiable rendering (meshgen ``fit``).

    The fit works in the target's normalised frame (bounding-box centre at 0, bounding radius 1), so the
    learning rate, loss weights and the F-score threshold do not depend on the target's size; chamfer and
    F-score are reported in that frame (units of the target's bounding radius).
    """

    level: int = Field(default=4, ge=0, le=6, description="Ico-sphere subdivision level (4: 2,562 vertices, 5,120 faces).")
    init_radius: float = Field(default=1.0, gt=0, le=4, description="Radius of the starting sphere, in target bounding radii.")
    iterations: int = Field(default=300, ge=1, le=100_000, description="Optimiser steps.")
    optimizer: Literal["sgd", "adam"] = Field(default="adam", description="Adam (default) or SGD with momentum (the "
                                              "published choice, where it beat Adam over thousands of steps). In 300 "
                                              "steps Adam fits better here: held-out IoU 0.893 against 0.862 on "
                                              "benchmarks/fit.py, chamfer halved (docs/fitting.md).")
    lr: float | None = Field(default=None, gt=0, description="Learning rate; default 1.0 for sgd, 0.01 for adam.")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    weights: FitLossWeights = Field(default_factory=FitLossWeights, description="Loss weights.")
    image_size: int = Field(default=128, ge=16, le=1024, description="Silhouette side (pixels) when rendering a mesh target.")
    views: int = Field(default=20, ge=1, le=1000, description="Target views rendered of a mesh target (elevations 0..180, "
                       "azimuths -180..180 degrees).")
    held_out_views: int = Field(default=4, ge=0, le=100, description="Extra views of a mesh target never fitted, for the "
                                "held-out silhouette IoU; for silhouette-folder targets, every k-th view is held out "
                                "instead when this is > 0 (k = views / held_out_views).")
    views_per_iteration: int = Field(default=4, ge=0, le=1000, description="Target views rendered per step, drawn at "
                                     "random (0: all). PyTorch3D's tutorial draws 2 of 20; 4 keeps a 300-step fit of "
                                     "20 views at 128 px to minutes on one core.")
    fov_deg: float = Field(default=30.0, gt=1, lt=170, description="Field of view of the views rendered of a mesh target.")
    sigma: float = Field(default=0.1, gt=0, le=100, description="Soft rasteriser edge sharpness, pixels² (PyTorch3D's 1e-4 "
                         "in NDC² is 0.41 px² at 128 px). Sharper than that by default: the union of the many faces "
                         "near a silhouette's rim dilates a blurry silhouette, and the fit then shrinks the mesh.")
    sigma_start: float | None = Field(default=None, gt=0, le=100, description="Coarse-to-fine: the soft rasteriser's "
                                      "sigma (pixels²) at the first step, annealed geometrically to ``sigma`` by the last "
                                      "(a blurrier silhouette reaches target pixels further from the rim). None: "
                                      "``sigma`` throughout.")
    lr_schedule: Literal["constant", "cosine"] = Field(default="constant", description="Learning rate over the steps: "
                                                       "constant, or cosine decay from ``lr`` to 0 (settles the "
                                                       "vertices at the end instead of leaving them oscillating).")
    points: int = Field(default=5000, ge=100, le=200_000, description="Surface points sampled per step for the chamfer loss "
                        "and for the chamfer / F-score metrics.")
    fscore_threshold: float = Field(default=0.05, gt=0, le=1, description="F-score distance threshold, in target bounding radii.")
    target_mode: Literal["silhouettes", "mesh"] = Field(default="silhouettes", description="With a mesh target: fit its "
                                                         "rendered silhouettes (2D-to-3D) or its surface (3D-to-3D).")
    seed: int = Field(default=0, ge=0, lt=2**32, description="Seed of view and point sampling.")
    log_every: int = Field(default=10, ge=1, le=100_000, description="Steps between progress events / loss-curve rows.")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1.0 if self.optimizer == "sgd" else 0.01)


class FittedParams(StrictModel):
    """A lab's own objects as a mesh family: class ``c`` is an ico-sphere fitted (:class:`FitParams`) to the silhouettes
    in ``folders[c]`` (masks + render records, as ``flatland fit FOLDER`` reads them: ``records.json`` or a
    ``<name>.json`` record beside every ``<name>.png`` / ``<name>.mask.png``), then rendered like procsynth.

    Every instance of a class is the same fitted mesh (the render stage varies pose and illumination). The dataset's
    hash covers the folder paths, not their contents: give changed masks a new folder (or a new dataset name).
    """

    family: Literal["fitted"] = "fitted"
    folders: list[str] = Field(min_length=1, max_length=100_000, description="One folder of masks + render records per "
                               "class (class c: folders[c]); relative paths are read from the working directory.")
    fit: FitParams = Field(default_factory=FitParams, description="How each class's mesh is fitted.")


#: Dataset kinds whose classes are meshes that the render stage draws with its mesh renderer.
MESH_KINDS = ("procsynth", "morphsynth", "fitted")
