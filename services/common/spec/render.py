"""Render settings: what varies from image to image, and how it is drawn."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.spec.base import Distribution, Fixed, StrictModel, Uniform


Output = Literal["rgb", "depth", "seg", "mask"]
RgbFormat = Literal["png", "webp", "jpeg"]
_RGB_FORMAT_DOC = (
    "How RGB images are stored: 'png' (lossless, rgb.png), 'webp' (lossless WebP, rgb.webp: smaller, slower to "
    "write) or 'jpeg' (quality 95, rgb.jpg: smallest, lossy). The training loader reads all three."
)


def _check_outputs(outputs: list[str], allowed: tuple[str, ...], family: str) -> None:
    unknown = [o for o in outputs if o not in allowed]
    if unknown:
        raise ValueError(f"outputs: {family} images have no {', '.join(unknown)} (choose from {', '.join(allowed)})")
    if "rgb" not in outputs:
        raise ValueError("outputs must include 'rgb' (training reads it, and the shard index points at it)")
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"outputs: each output once, got {outputs}")


def _u(low: float, high: float) -> Uniform:
    return Uniform(low=low, high=high)


def _f(value: float) -> Fixed:
    return Fixed(value=value)


class CameraSpec(StrictModel):
    azimuth_deg: Distribution = Field(default_factory=lambda: _u(0, 360), description="Azimuth around the object (degrees).")
    elevation_deg: Distribution = Field(default_factory=lambda: _u(-60, 60), description="Elevation above the object's equator (degrees).")
    distance: Distribution | Literal["auto"] = Field(
        default="auto", description="Camera distance (world units), or 'auto' to fit the object's bounding sphere in view."
    )
    auto_fit_margin: float = Field(default=1.15, ge=1.0, le=4.0, description="With distance 'auto': extra room around the unscaled bounding sphere; scale jitter above this factor can push the object past the frame.")
    roll_deg: Distribution = Field(default_factory=lambda: _u(-15, 15), description="Camera roll about the viewing axis (degrees).")
    fov_deg: Distribution = Field(default_factory=lambda: _f(40), description="Vertical field of view (degrees).")


class LightSpec(StrictModel):
    kind: Literal["directional", "point", "spot"] = Field(default="directional", description="Light type.")
    azimuth_deg: Distribution = Field(default_factory=lambda: _u(0, 360), description="Direction the light comes from: azimuth (degrees).")
    elevation_deg: Distribution = Field(default_factory=lambda: _u(10, 80), description="Direction the light comes from: elevation (degrees).")
    intensity: Distribution = Field(default_factory=lambda: _u(0.8, 2.0), description="Intensity (directional: lux-like; point/spot: candela-like, scaled by distance² so the irradiance at the object matches).")
    color_rgb: tuple[Distribution, Distribution, Distribution] = Field(
        default_factory=lambda: (_f(1.0), _f(1.0), _f(1.0)),
        description="Light colour, each channel in [0,1]. White by default: ProcSynthDB is not coloured (Table 1 of "
        "the proposal); give distributions (e.g. uniform 0.8..1 per channel) for coloured light.",
    )
    distance_factor: float = Field(default=2.5, gt=0, description="Point/spot lights: distance from the object centre in bounding radii.")


class IlluminationSpec(StrictModel):
    count: Distribution = Field(default_factory=lambda: _f(2), description="Number of lights drawn per image (rounded, >= 1).")
    lights: list[LightSpec] = Field(default_factory=lambda: [LightSpec()], min_length=1, max_length=100, description="Light templates, used in turn.")
    ambient: Distribution = Field(default_factory=lambda: _u(0.1, 0.4), description="Ambient light level in [0,1].")


class MaterialSpec(StrictModel):
    base_color: tuple[float, float, float] = Field(default=(0.7, 0.7, 0.7), description="Grey by default (ProcSynthDB); morphsynth uses its per-vertex albedo.")
    metallic: float = Field(default=0.0, ge=0, le=1, description="Metalness in [0,1] (0: dielectric, like plastic or clay).")
    roughness: float = Field(default=0.6, ge=0, le=1, description="Surface roughness in [0,1]: 0 mirror-like highlights, 1 matte.")
    use_vertex_colors: bool = Field(default=True, description="Use per-vertex albedo when the mesh has it.")
    shading: Literal["phong", "pbr"] = Field(
        default="phong",
        description="Lighting model: 'phong' (Blinn-Phong, same diffuse term, about twice as fast in software GL) "
        "or 'pbr' (pyrender's metallic-roughness GGX BRDF).",
    )
    double_sided: bool = Field(
        default=True,
        description="Draw back faces too. False culls them: ~30% faster in software GL and identical for closed, "
        "consistently wound meshes, but open parts (tube ends, GP folds) then show holes.",
    )
    smooth_shading: bool = Field(default=False, description="Interpolate vertex normals (smooth) instead of one normal per face (flat, right for primitives with sharp edges).")


class BackgroundSpec(StrictModel):
    kind: Literal["plain", "noise"] = Field(default="plain", description="Plain colour, or a noise texture.")
    color_rgb: tuple[float, float, float] = Field(default=(0.0, 0.0, 0.0), description="Plain background colour.")
    noise_scale: float = Field(default=8.0, gt=0, description="Noise backgrounds: features per image side.")


class PlanarVariationSpec(StrictModel):
    """2D variants of a canonical render (FlatWorldDB): a flip and a planar affine map, drawn per image.

    The image is first rendered as the camera and lights say, then warped in the image plane about its
    centre: ``translate · rotate · shear · scale · flip``. RGB is resampled bilinearly; depth, segmentation
    and mask move with it by nearest neighbour (depth values are those of the canonical render), and
    what the warp uncovers is background. The map is recorded with each image.
    """

    enabled: bool = Field(default=False, description="Warp every image by a random flip and planar affine map (FlatWorld's 2D variation).")
    flip_probability: float = Field(default=0.5, ge=0, le=1, description="Probability of a left-right flip.")
    rotation_deg: Distribution = Field(default_factory=lambda: _u(-15, 15), description="In-plane rotation (degrees, counter-clockwise).")
    scale: Distribution = Field(default_factory=lambda: _u(0.85, 1.1), description="Isotropic scale about the image centre.")
    shear_deg: Distribution = Field(default_factory=lambda: _u(-10, 10), description="Horizontal shear angle (degrees).")
    translate: Distribution = Field(default_factory=lambda: _u(-0.08, 0.08), description="Shift along each image axis, as a fraction of the image side (drawn for x, then y).")


class ClassTextureSpec(StrictModel):
    """A surface texture per class (a solid texture: a function of the point on the object, so it sticks to the
    surface from every viewpoint), for cue-conflict studies on families whose classes have no appearance of their
    own (procsynth is grey). Class ``c``'s texture is two colours (hues spread by the golden angle over the classes,
    plus a seeded jitter) mixed by a sum of ``waves`` random plane waves in object coordinates (bounding radius = 1),
    drawn from ``seed`` and the class alone: two datasets with the same ``class_texture`` give every class the same
    texture. The rendered shading is multiplied by the texture's albedo over the material's base colour.
    """

    enabled: bool = Field(default=False, description="Give every image its class's surface texture (cue-conflict renders: another class's).")
    seed: int = Field(default=0, ge=0, lt=2**63, description="Seed of the textures (with the class index); not the dataset seed, so a conflict set and its non-conflict twin share textures.")
    waves: int = Field(default=6, ge=1, le=64, description="Plane waves summed per texture.")
    frequency: tuple[float, float] = Field(default=(1.0, 3.0), description="Range of the waves' frequencies, cycles per bounding radius, drawn per class (a class-specific texture scale).")
    saturation: float = Field(default=0.8, ge=0, le=1, description="HSV saturation of the two colours of a texture.")

    @model_validator(mode="after")
    def _range(self):
        low, high = self.frequency
        if not 0 < low <= high <= 100:
            raise ValueError(f"frequency must satisfy 0 < low <= high <= 100, got {self.frequency}")
        return self


class RenderSettings(StrictModel):
    image_size: int = Field(default=224, ge=16, le=2048, description="Square image side (pixels).")
    views_per_instance: int = Field(default=10, ge=1, le=100_000, description="Images rendered of each mesh instance.")
    camera: CameraSpec = Field(default_factory=CameraSpec, description="Camera pose and field of view, drawn per image.")
    illumination: IlluminationSpec = Field(default_factory=IlluminationSpec, description="Lights and ambient level, drawn per image.")
    material: MaterialSpec = Field(default_factory=MaterialSpec, description="Surface material of the object.")
    background: BackgroundSpec = Field(default_factory=BackgroundSpec, description="What is behind the object.")
    scale_jitter: Distribution = Field(default_factory=lambda: _u(0.9, 1.1), description="Random object scale factor. With camera distance 'auto' the camera fits the unscaled object, so this changes the object's apparent size in the image.")
    pose_variation: bool = Field(default=True, description="False: every view uses the centre of each camera distribution (FlatWorld ablation).")
    illumination_variation: bool = Field(default=True, description="False: every view uses the centre of each light distribution (FlatWorld ablation).")
    planar_variation: PlanarVariationSpec = Field(
        default_factory=PlanarVariationSpec,
        description="2D variation of each image (flip, rotation, scale, shear, shift in the image plane); off by "
        "default. FlatWorld switches pose and illumination variation off and this on.",
    )
    shard_size: int = Field(default=1000, ge=1, le=100_000, description="Samples per WebDataset shard.")
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="Fraction of views held out as the validation split.")
    backend: Literal["auto", "osmesa", "egl"] = Field(default="auto", description="OpenGL platform; 'auto' uses PYOPENGL_PLATFORM or OSMesa.")
    outputs: list[Output] = Field(
        default_factory=lambda: ["rgb", "depth", "seg", "mask"],
        description="What each sample stores besides its record (json, cls): rgb (always), depth (16-bit PNG of "
        "millimetres, ±0.5 mm; 3D objectives need it), seg, mask. A classification-only dataset can keep [rgb] "
        "and store about 1/3 of the bytes.",
    )
    rgb_format: RgbFormat = Field(default="png", description=_RGB_FORMAT_DOC)
    class_texture: ClassTextureSpec = Field(
        default_factory=ClassTextureSpec,
        description="A solid surface texture per class (off by default); procsynth needs it for cue-conflict renders.",
    )
    cue_conflict: bool = Field(
        default=False,
        description="Cue-conflict renders: each image shows the shape of its class A and the surface appearance of "
        "another class B (the class texture of B with class_texture, else B's morphsynth albedo), B cycling over the "
        "other classes; the record holds shape_class (= the sample's class) and texture_class. For shape-bias evaluation.",
    )

    @model_validator(mode="after")
    def _outputs(self):
        _check_outputs(self.outputs, ("rgb", "depth", "seg", "mask"), "procsynth/morphsynth")
        if self.class_texture.enabled and self.planar_variation.enabled:
            raise ValueError("class_texture: not with planar_variation (the texture is laid on the 3D render, before any "
                             "2D warp); switch one of them off")
        return self


class FractalRenderSettings(StrictModel):
    image_size: int = Field(default=362, ge=16, le=2048, description="Square image side (pixels); FractalDB uses 362.")
    points: int = Field(default=200_000, ge=1000, le=10_000_000, description="Chaos-game points per image.")
    drawings_per_variant: int = Field(default=10, ge=1, le=100_000, description="Images per (weight variant, flip).")
    patch: int = Field(default=3, ge=1, le=9, description="Each point is drawn as a random patch of this size.")
    pad: int = Field(
        default=6, ge=0, le=256,
        description="FractalDB's padding: each axis of the point cloud is mapped to pixels pad..image_size - pad "
        "(truncated), and each patch is pasted one pixel right of and below its point, as FractalDB's renderer does "
        "(its default: 6).",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where the chaos game runs: numpy on the CPU, or torch on a CUDA GPU; 'auto' uses CUDA when "
        "torch sees one. Images agree across devices up to float rounding (same map choices).",
    )
    shard_size: int = Field(default=1000, ge=1, le=100_000, description="Samples per WebDataset shard.")
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="Fraction of each (variant, flip)'s drawings held out as the validation split.")
    outputs: list[Output] = Field(default_factory=lambda: ["rgb", "seg"], description="What each sample stores besides its record: rgb (always), seg.")
    rgb_format: RgbFormat = Field(default="png", description=_RGB_FORMAT_DOC)

    @model_validator(mode="after")
    def _check(self):
        _check_outputs(self.outputs, ("rgb", "seg"), "fractal2d")
        if 2 * self.pad >= self.image_size:
            raise ValueError(f"pad ({self.pad}) must be less than half of image_size ({self.image_size})")
        return self


class NoiseClassPrior(StrictModel):
    """One class of the noise-scene generator: the means of its objects' hue, elongation and noise scale."""

    hue: float = Field(ge=0, lt=360, description="Mean hue h_k (degrees); objects draw h ~ N(h_k, hue_std^2) mod 360 and are coloured HSL(h, 1, 0.5).")
    rho: float = Field(ge=0, le=1, description="Mean elongation rho_k; objects draw rho ~ N(rho_k, rho_std^2) clamped to [0, 1] (0.5: a sphere).")
    noise_scale: float = Field(gt=1, le=1000, description="Mean texture noise scale r_k; objects draw r ~ N(r_k, noise_scale_std^2) clamped to > 1.")


#: The published generator's three classes. The paper gives (150, 0.55, 5) and (250, 0.45, 17.5); the third
#: hue is ours: 20 degrees lies in the middle of the largest gap of the hue circle (130 degrees from both).
PUBLISHED_NOISE_CLASSES = ((150.0, 0.55, 5.0), (250.0, 0.45, 17.5), (20.0, 0.5, 30.0))


class NoiseSceneParams(StrictModel):
    """Abstract scenes: 1-20 ellipsoids on a noise background, with per-pixel labels (the published generator's
    defaults; see docs/render-stage.md)."""

    family: Literal["noisescenes"] = "noisescenes"
    objects_range: tuple[int, int] = Field(default=(1, 20), description="Objects per scene N ~ U{low..high}.")
    noise: Literal["perlin", "sparse_convolution", "both"] = Field(
        default="perlin",
        description="Texture noise kind (objects and background, 3D noise at the surface points): improved Perlin or "
        "sparse convolution with a cubic kernel; 'both': even scenes Perlin, odd scenes sparse convolution (the "
        "published study's 10,000 + 10,000 scenes in one dataset, so both share the classes).")
    class_priors: list[NoiseClassPrior] = Field(
        default_factory=lambda: [NoiseClassPrior(hue=h, rho=r, noise_scale=s) for h, r, s in PUBLISHED_NOISE_CLASSES],
        max_length=100_000,
        description="Per class (in class order) the means of hue, elongation and noise scale; the published three "
        "by default. Classes beyond the list draw their means from the seed (hue U(0, 360), rho U(0.3, 0.7), "
        "noise scale U(5, 30)).")
    hue_std: float = Field(default=50.0, ge=0, le=360, description="Per-object hue spread around the class mean (degrees).")
    rho_std: float = Field(default=0.05, ge=0, le=1, description="Per-object elongation spread around the class mean.")
    noise_scale_std: float = Field(default=5.0, ge=0, le=1000, description="Per-object noise-scale spread around the class mean.")
    scale_range: tuple[float, float] = Field(default=(0.1, 0.7), description="Object scale ~ U(low, high) (scene units).")
    position_range: tuple[float, float] = Field(default=(-1.5, 1.5), description="Object centre x, y ~ U(low, high) (scene units).")
    view_half_width: float = Field(default=2.0, gt=0, le=100, description="The orthographic camera sees [-w, w]^2 of the scene.")
    diffuse_range: tuple[float, float] = Field(default=(0.25, 0.75), description="Phong diffuse kd ~ U(low, high) per object.")
    specular_range: tuple[float, float] = Field(default=(0.0, 0.5), description="Phong specular ks ~ U(low, high) per object.")
    shininess_range: tuple[float, float] = Field(default=(10.0, 100.0), description="Phong shininess ~ U(low, high) per object.")
    ambient: float = Field(default=0.1, ge=0, le=1, description="Ambient term (not among the published parameters; keeps rims from going black).")
    background_noise_scale_range: tuple[float, float] = Field(default=(1.0, 20.0), description="Background noise scale r_bg ~ U(low, high); the background is black-and-white noise.")
    image_size: int = Field(default=224, ge=16, le=2048, description="Square image side (pixels).")
    scenes: int = Field(default=100, ge=1, le=10_000_000, description="Scenes in the dataset.")
    shard_size: int = Field(default=1000, ge=1, le=100_000, description="Samples per WebDataset shard.")
    val_fraction: float = Field(default=0.1, ge=0, lt=1, description="Fraction of the scenes held out as the validation split (the last ones).")
    outputs: list[Output] = Field(default_factory=lambda: ["rgb", "seg"], description="What each sample stores besides its record: rgb (always), seg (the label map).")
    rgb_format: RgbFormat = Field(default="png", description=_RGB_FORMAT_DOC)

    @model_validator(mode="after")
    def _check(self):
        _check_outputs(self.outputs, ("rgb", "seg"), "noisescenes")
        for name in ("scale_range", "position_range", "diffuse_range", "specular_range", "shininess_range",
                     "background_noise_scale_range"):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"{name} must satisfy low <= high, got {(low, high)}")
        if self.scale_range[0] <= 0 or self.background_noise_scale_range[0] <= 0 or self.shininess_range[0] < 0:
            raise ValueError("scale_range and background_noise_scale_range must be > 0, shininess_range >= 0")
        lo, hi = self.objects_range
        if not 1 <= lo <= hi <= 200:
            raise ValueError(f"objects_range must satisfy 1 <= low <= high <= 200, got {self.objects_range}")
        return self
