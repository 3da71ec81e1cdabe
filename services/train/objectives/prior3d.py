"""The 3D prior: a proxy 3D reconstruction task on exact rendered depth (``task: 3d_prior``).

From the backbone's image tokens a decoder predicts triplanes; a radiance field read from them is
volume-rendered along the camera rays of each image; the losses compare the rendered image and
depth with the input image and its exact depth map, and keep the backbone close to a frozen copy
of its initial weights (docs/3d-prior.md):

    L = w_rgb L_rgb + w_depth L_depth + w_dist L_dist + w_norm L_norm

- backbone: any torchvision ResNet-family model (``resnet*``, ``resnext*``, ``wide_resnet*``: the
  ``layer4`` map) or ViT (``vit_*``: the encoder's patch tokens); its classification head is kept,
  untrained, so the checkpoint (the backbone alone) loads into the torchvision model as any run's does;
- decoder (``prior.decoder: triplane``): 3 x token_grid^2 learnable tokens cross-attend to the image
  tokens (with a 2D sine-cosine position code), are laid out as three planes and upsampled (bilinear x2 +
  3x3 convolution blocks) to ``triplane_resolution``^2 x ``triplane_channels`` planes (xy, xz, yz);
- radiance field: bilinear samples of the three planes, summed, a two-layer MLP to density (softplus)
  and colour (sigmoid);
- volume rendering (:func:`render_rays`): ``samples_per_ray`` stratified samples plus
  ``importance_samples`` drawn from their weights, in the camera frame of each image;
- ablations: ``prior.decoder: conv`` (no triplanes: upsampling convolutions straight to image and
  depth), ``prior.loss.distill: 0`` (no distillation), no ``init_from`` (from scratch).

Geometry. Everything is in the camera frame of each image (OpenGL: x right, y up, looking down -z),
in units of the camera's distance ``d`` to its look-at point (the object's centre in our renders).
The triplanes span the cube of half side ``h = box_half_size`` about (0, 0, -1); the ray of a pixel
is ``t * ((u - cx) / fx, -(v - cy) / fy, -1)``, so ``t`` is the depth along the viewing axis in
units of ``d``, the quantity render stores (``depth.png``, viewing-axis distance), and rays are
sampled over ``t`` in ``[1 - h, 1 + h]``. Pixel ``(u, v)`` of the network input maps to the stored
image through the loader's ``view`` (random crop, resize, flip) and, for FlatWorld records, to the
canonical render through the inverse of the record's planar matrix, so augmentation moves the rays
with the pixels.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from services.common.errors import FlatlandError, SpecError
from services.render.api import DEPTH_UNIT_M
from services.train.data import FolderStream
from services.train.models import check_model_name, model_kwargs
from services.train.objectives.base import Objective
from services.train.objectives.registry import register_objective

#: per epoch: the four loss terms (depth_mse in ``prior.depth_units``), and the depth's mean absolute error in metres
METRICS = ("rgb_mse", "depth_mse", "distill", "density_l1", "depth_mae_m")


class RecordError(FlatlandError, ValueError):
    """A sample the 3D prior cannot use (no camera in its record, say)."""


# -- the backbone -----------------------------------------------------------------------------------

class Backbone(nn.Module):
    """A torchvision classifier whose image tokens feed the decoder (``net`` is the whole model)."""

    def __init__(self, net: nn.Module, name: str):
        super().__init__()
        self.net = net
        if isinstance(net, torchvision.models.ResNet):
            self.family = "resnet"
            self.dim = net.fc.in_features
        elif isinstance(net, torchvision.models.VisionTransformer):
            self.family = "vit"
            self.dim = net.hidden_dim
        else:
            raise SpecError(f"model: task 3d_prior reads image tokens from ResNet-family (resnet*, resnext*, "
                            f"wide_resnet*) or ViT (vit_*) backbones; got {name!r}")

    def grid_side(self, input_size: int) -> int:
        """Side of the token grid for square inputs of ``input_size``."""
        if self.family == "resnet":
            return math.ceil(input_size / 32)  # five stride-2 stages with padding
        return input_size // self.net.patch_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Image tokens ``(N, L, dim)`` and their grid ``(h, w)``."""
        net = self.net
        if self.family == "resnet":
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
            n, c, h, w = x.shape
            return x.flatten(2).transpose(1, 2), (h, w)
        x = net._process_input(x)
        n, patches = x.shape[:2]
        x = net.encoder(torch.cat([net.class_token.expand(n, -1, -1), x], dim=1))[:, 1:]
        side = int(round(math.sqrt(patches)))
        return x, (side, side)


def frozen_copy(backbone: Backbone) -> Backbone:
    """A copy that never learns: no gradients, and batch-norm running statistics that do not move
    (momentum 0), so in training mode it normalises each batch exactly as the student does."""
    teacher = copy.deepcopy(backbone)
    for p in teacher.parameters():
        p.requires_grad_(False)
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    return teacher


def position_code(h: int, w: int, dim: int, device) -> torch.Tensor:
    """(h * w, dim) 2D sine-cosine position code (half the channels for y, half for x)."""
    quarter = max(dim // 4, 1)
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = [torch.sin(ys.flatten()[:, None] * freq), torch.cos(ys.flatten()[:, None] * freq),
             torch.sin(xs.flatten()[:, None] * freq), torch.cos(xs.flatten()[:, None] * freq)]
    code = torch.cat(parts, dim=1)
    return F.pad(code, (0, dim - code.shape[1]))


# -- decoders ----------------------------------------------------------------------------------------

class CrossBlock(nn.Module):
    """Pre-norm cross-attention from queries to image tokens, then an MLP; both residual."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_q, self.norm_kv, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(kv)
        q = q + self.attention(self.norm_q(q), kv, kv, need_weights=False)[0]
        return q + self.mlp(self.norm_mlp(q))


def upsampling_blocks(channels_in: int, channels_out: int, doublings: int) -> tuple[nn.Sequential, int]:
    """``doublings`` x (bilinear x2, 3x3 convolution, GroupNorm, ReLU), halving the width down to ``channels_out``."""
    layers, width = [], channels_in
    for _ in range(doublings):
        nxt = max(channels_out, width // 2)
        layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                   nn.Conv2d(width, nxt, 3, padding=1), nn.GroupNorm(math.gcd(8, nxt), nxt), nn.ReLU(inplace=True)]
        width = nxt
    return nn.Sequential(*layers), width


class TriplaneDecoder(nn.Module):
    """Image tokens -> three feature planes ``(N, 3, C, R, R)`` (xy, xz, yz)."""

    def __init__(self, feature_dim: int, prior):
        super().__init__()
        g, d = prior.token_grid, prior.token_dim
        self.grid, self.dim = g, d
        self.project = nn.Linear(feature_dim, d)
        self.tokens = nn.Parameter(torch.randn(3 * g * g, d) * 0.02)
        self.blocks = nn.ModuleList([CrossBlock(d, prior.attention_heads) for _ in range(prior.attention_layers)])
        doublings = int(round(math.log2(prior.triplane_resolution / g)))
        self.upsample, width = upsampling_blocks(d, prior.triplane_channels, doublings)
        self.out = nn.Conv2d(width, prior.triplane_channels, 1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        n = tokens.shape[0]
        kv = self.project(tokens) + position_code(*grid, self.dim, tokens.device)
        q = self.tokens.expand(n, -1, -1)
        for block in self.blocks:
            q = block(q, kv)
        g = self.grid
        planes = q.view(n, 3, g, g, self.dim).permute(0, 1, 4, 2, 3).reshape(n * 3, self.dim, g, g)
        planes = self.out(self.upsample(planes))
        return planes.view(n, 3, *planes.shape[1:])


class ConvDecoder(nn.Module):
    """The ablation without triplanes: image tokens -> an image and a depth map (``render_size``^2)."""

    def __init__(self, feature_dim: int, prior, grid_side: int):
        super().__init__()
        self.size = prior.render_size
        self.project = nn.Conv2d(feature_dim, prior.token_dim, 1)
        doublings = max(0, math.ceil(math.log2(prior.render_size / grid_side)))
        self.upsample, width = upsampling_blocks(prior.token_dim, prior.triplane_channels, doublings)
        self.out = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, c = tokens.shape
        x = self.project(tokens.transpose(1, 2).reshape(n, c, *grid))
        x = self.out(self.upsample(x))
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return torch.sigmoid(x[:, :3]), torch.sigmoid(x[:, 3])  # depth as a fraction of the box's depth range


class RadianceField(nn.Module):
    """Triplane features at 3D points (coordinates in [-1, 1]^3), summed, a two-layer MLP to density and colour."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.Softplus(), nn.Linear(hidden, 4))

    def forward(self, planes: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``planes`` (N, 3, C, R, R), ``points`` (N, P, 3) -> density (N, P) >= 0, colour (N, P, 3) in [0, 1]."""
        n, p, _ = points.shape
        c, r = planes.shape[2], planes.shape[-1]
        coords = torch.stack([points[..., :2], points[..., ::2], points[..., 1:]], dim=1)  # xy, xz, yz
        sampled = F.grid_sample(planes.reshape(n * 3, c, r, r), coords.view(n * 3, p, 1, 2), mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # (3N, C, P, 1): one call for the planes
        features = sampled.view(n, 3, c, p).sum(1).transpose(1, 2)
        out = self.mlp(features)
        return F.softplus(out[..., 0]), torch.sigmoid(out[..., 1:])


# -- volume rendering -----------------------------------------------------------------------------------

def composite(density: torch.Tensor, colour: torch.Tensor | None, t: torch.Tensor, far: float,
              ray_length: torch.Tensor) -> dict:
    """Alpha compositing of samples at sorted depths ``t`` (N, R, S) up to ``far``.

    Each sample stands for the interval up to the next one (the last: up to ``far``); ``ray_length``
    (N, R) is the length of the ray per unit of ``t``. Returns weights (N, R, S), opacity (N, R),
    depth = sum w t + (1 - opacity) far (a ray that meets nothing ends at the far plane) and, with
    colours (N, R, S, 3), the colour sum w c.
    """
    deltas = torch.cat([t[..., 1:] - t[..., :-1], (far - t[..., -1:]).clamp(min=0)], dim=-1)
    alpha = 1.0 - torch.exp(-density * deltas * ray_length[..., None])
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha + 1e-10], dim=-1), dim=-1)
    weights = alpha * transmittance[..., :-1]
    opacity = weights.sum(-1)
    out = {"weights": weights, "opacity": opacity, "depth": (weights * t).sum(-1) + (1.0 - opacity) * far}
    if colour is not None:
        out["rgb"] = (weights[..., None] * colour).sum(-2)
    return out


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, count: int, deterministic: bool) -> torch.Tensor:
    """``count`` depths per ray drawn from the piecewise-constant density ``weights`` over ``bins`` (edges,
    one more than weights): inverse-transform sampling as in NeRF's hierarchical sampling."""
    weights = weights + 1e-5  # no empty bins: a ray of zero weights samples uniformly
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), torch.cumsum(pdf, -1)], dim=-1)
    shape = (*cdf.shape[:-1], count)
    if deterministic:
        u = torch.linspace(0.0, 1.0, count + 2, device=cdf.device, dtype=cdf.dtype)[1:-1].expand(shape)
    else:
        u = torch.rand(shape, device=cdf.device, dtype=cdf.dtype)
    u = u.contiguous()
    above = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)
    below = above - 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = bins.gather(-1, below), bins.gather(-1, above)
    span = torch.where(cdf_hi - cdf_lo < 1e-8, torch.ones_like(cdf_hi), cdf_hi - cdf_lo)
    return bin_lo + (u - cdf_lo) / span * (bin_hi - bin_lo)


def render_rays(field, directions: torch.Tensor, near: float, far: float, samples: int, importance: int,
                *, stratified: bool) -> dict:
    """Volume-render rays ``t * directions`` (N, R, 3) for ``t`` in [near, far].

    ``field(points (N, P, 3)) -> (density (N, P), colour (N, P, 3) or None)``. ``samples`` stratified
    depths per ray (jittered in their strata when ``stratified``, their centres otherwise), then
    ``importance`` more drawn from the first pass's weights, each spread over the stretch since the
    previous sample (gradients do not flow through where they lie); the field is queried once per sample. Returns ``depth`` and ``opacity`` (N, R), ``rgb``
    (N, R, 3) when the field gives colours, and ``densities``: every queried density, for L_norm.
    """
    n, r, _ = directions.shape
    edges = torch.linspace(near, far, samples + 1, device=directions.device, dtype=directions.dtype)
    offset = torch.rand(n, r, samples, device=directions.device, dtype=directions.dtype) if stratified else 0.5
    t = (edges[:-1] + (edges[1:] - edges[:-1]) * offset).expand(n, r, samples)  # (N, R, S)
    ray_length = directions.norm(dim=-1)

    def query(depths):
        points = (depths[..., None] * directions[:, :, None, :]).reshape(n, -1, 3)
        density, colour = field(points)
        s = depths.shape[-1]
        return density.view(n, r, s), None if colour is None else colour.view(n, r, s, 3)

    density, colour = query(t)
    densities = [density]
    if importance > 0:
        with torch.no_grad():
            first = composite(density, None, t, far, ray_length)
            # a sample that finds density saw it begin somewhere since the previous sample: its weight is spread
            # over that stretch (NeRF's bins about the samples would miss a surface between two samples)
            edges = torch.cat([torch.full_like(t[..., :1], near), t], dim=-1)
            extra_t = sample_pdf(edges, first["weights"], importance, deterministic=not stratified)
        extra_density, extra_colour = query(extra_t)
        densities.append(extra_density)
        t = torch.cat([t, extra_t], dim=-1)
        t, order = t.sort(dim=-1)
        density = torch.cat([density, extra_density], dim=-1).gather(-1, order)
        if colour is not None:
            colour = torch.cat([colour, extra_colour], dim=-2).gather(-2, order[..., None].expand(-1, -1, -1, 3))
    out = composite(density, colour, t, far, ray_length)
    out["densities"] = torch.cat([d.flatten(1) for d in densities], dim=1)
    out["t"] = t
    return out


# -- the network --------------------------------------------------------------------------------------

class Prior3DNet(nn.Module):
    """Backbone, frozen teacher (with distillation), decoder and radiance field; ``forward(x, directions)``."""

    def __init__(self, net: nn.Module, name: str, prior, input_size: int):
        super().__init__()
        self.prior = prior
        self.backbone = Backbone(net, name)
        self.teacher = frozen_copy(self.backbone) if prior.loss.distill > 0 else None
        if prior.decoder == "triplane":
            self.decoder = TriplaneDecoder(self.backbone.dim, prior)
            self.field = RadianceField(prior.triplane_channels, prior.mlp_hidden)
            self.background = nn.Parameter(torch.zeros(3))  # colour behind the box (sigmoid)
        else:
            self.decoder = ConvDecoder(self.backbone.dim, prior, self.backbone.grid_side(input_size))
            self.field = None

    def refresh_teacher(self) -> None:
        """The teacher becomes a frozen copy of the backbone as it is now (after loading initial weights)."""
        if self.teacher is not None:
            self.teacher.load_state_dict(self.backbone.state_dict())

    def forward(self, x: torch.Tensor, directions: torch.Tensor) -> dict:
        tokens, grid = self.backbone(x)
        out: dict[str, Any] = {}
        if self.teacher is not None:
            with torch.no_grad():
                teacher_tokens, _ = self.teacher(x)
            out["distill"] = F.mse_loss(tokens.float(), teacher_tokens.float())
        else:
            out["distill"] = tokens.new_zeros((), dtype=torch.float32)
        h = self.prior.box_half_size
        near, far = 1.0 - h, 1.0 + h
        if self.field is None:
            rgb, fraction = self.decoder(tokens, grid)
            out["rgb"] = rgb.float()
            out["depth"] = (near + (far - near) * fraction.float()).flatten(1)  # units of the camera distance
            out["density_l1"] = out["distill"].new_zeros(())
            return out
        planes = self.decoder(tokens, grid)
        with torch.autocast(x.device.type, enabled=False):  # compositing wants float32 (transmittance products)
            planes = planes.float()
            centre = torch.tensor([0.0, 0.0, -1.0], device=x.device)

            def field(points):
                return self.field(planes, (points - centre) / h)

            rendered = render_rays(field, directions.float(), near, far, self.prior.samples_per_ray,
                                   self.prior.importance_samples, stratified=self.training)
            background = torch.sigmoid(self.background)
            rgb = rendered["rgb"] + (1.0 - rendered["opacity"])[..., None] * background
        s = self.prior.render_size
        out["rgb"] = rgb.transpose(1, 2).reshape(x.shape[0], 3, s, s)
        out["depth"] = rendered["depth"]
        out["density_l1"] = rendered["densities"].abs().mean()
        return out


# -- cameras and targets -------------------------------------------------------------------------------

def camera_of(record_text: str, key: str) -> tuple[np.ndarray, float, np.ndarray | None]:
    """``([fx, fy, cx, cy], distance, planar (2, 3) matrix or None)`` of a render record."""
    try:
        record = json.loads(record_text)
        camera = record["camera"]
        k = camera["intrinsics"]
        intrinsics = np.array([k["fx"], k["fy"], k["cx"], k["cy"]], dtype=np.float64)
        distance = float(camera["distance"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RecordError(f"sample {key}: its record has no camera (camera.intrinsics fx/fy/cx/cy and camera.distance: "
                          f"{exc!r}); task 3d_prior trains on 3D views (procsynth / morphsynth renders)") from None
    if not (np.all(np.isfinite(intrinsics)) and intrinsics[0] > 0 and intrinsics[1] > 0 and distance > 0):
        raise RecordError(f"sample {key}: camera intrinsics {intrinsics.tolist()} / distance {distance} are not usable")
    planar = record.get("planar")
    matrix = None if planar is None else np.asarray(planar["matrix"], dtype=np.float64)
    return intrinsics, distance, matrix


def ray_directions(intrinsics: np.ndarray, view: np.ndarray, planar: np.ndarray | None, input_size: int,
                   render_size: int) -> np.ndarray:
    """(render_size^2, 3) directions (z = -1) of the rays through a render_size^2 grid over the network input.

    ``view`` (2, 3) maps input pixels to stored-image pixels; ``planar`` (2, 3), when given, maps the
    canonical render's pixels to the stored image's (FlatWorld), and is inverted.
    """
    centres = (np.arange(render_size) + 0.5) * input_size / render_size
    u, v = np.meshgrid(centres, centres, indexing="xy")
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], axis=0)  # (3, P)
    stored = view @ pixels
    if planar is not None:
        full = np.vstack([planar, [0.0, 0.0, 1.0]])
        stored = (np.linalg.inv(full) @ np.vstack([stored, np.ones(stored.shape[1])]))[:2]
    fx, fy, cx, cy = intrinsics
    return np.stack([(stored[0] - cx) / fx, -(stored[1] - cy) / fy, -np.ones(stored.shape[1])], axis=1)


@register_objective
class Prior3D(Objective):
    name = "3d_prior"
    metrics = METRICS
    reads_members = ("depth.png", "json")

    def __init__(self, run):
        super().__init__(run)
        check_model_name(run.model)
        if run.prior is None:
            raise SpecError("prior: task 3d_prior needs its settings")
        self.prior = run.prior
        self.source_classes: int | None = None

    def start_from(self, checkpoint: dict | None) -> None:
        self.source_classes = None if checkpoint is None else int(checkpoint["num_classes"])

    def output_classes(self, num_classes: int) -> int:
        # the (untrained) head keeps the source run's classes, so the checkpoint stays that run's model; an image
        # folder has no classes: one
        return self.source_classes or max(num_classes, 1)

    def sample_stream(self, *, epoch: int, rank: int, world_size: int):
        if self.prior.image_folder is None:
            return None
        return FolderStream(self.prior.image_folder, input_size=self.run.input_size, augment=self.run.augment,
                            fov_deg=self.prior.fov_deg, seed=self.run.seed, epoch=epoch, rank=rank,
                            world_size=world_size)

    def build_model(self, num_classes: int) -> nn.Module:
        net = torchvision.models.get_model(self.run.model, weights=None, num_classes=num_classes,
                                           **model_kwargs(self.run.model, self.run.input_size))
        model = Prior3DNet(net, self.run.model, self.prior, self.run.input_size)
        for p in model.backbone.net.parameters():
            p.requires_grad_(True)
        head = model.backbone.net.fc if model.backbone.family == "resnet" else model.backbone.net.heads
        for p in head.parameters():  # no loss reaches the head: leave it out of the optimiser
            p.requires_grad_(False)
        return model

    def load_initial(self, model: nn.Module, checkpoint: dict) -> None:
        model.backbone.net.load_state_dict(checkpoint["state_dict"])
        model.refresh_teacher()

    def checkpoint_model(self, model: nn.Module) -> nn.Module:
        return model.backbone.net

    def forward(self, model: nn.Module, x: torch.Tensor, targets: dict) -> Any:
        return model(x, targets["directions"])

    def targets(self, batch: dict, device: torch.device) -> dict:
        size, s = self.run.input_size, self.prior.render_size
        images = batch["image"].permute(0, 3, 1, 2).float().div(255.0)
        rgb = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        steps = batch["depth"]
        steps = F.interpolate(steps[:, None].float(), size=(s, s), mode="nearest-exact")[:, 0] if steps.shape[-1] != s \
            else steps.float()
        directions, distances = [], []
        for i, key in enumerate(batch["key"]):
            intrinsics, distance, planar = camera_of(batch["record"][i], key)
            directions.append(ray_directions(intrinsics, batch["view"][i].numpy(), planar, size, s))
            distances.append(distance)
        distance = torch.tensor(distances, dtype=torch.float32)
        depth = steps.flatten(1) * DEPTH_UNIT_M / distance[:, None]  # units of the camera distance
        mask = steps.flatten(1) > 0
        if self.prior.background == "far":
            depth = torch.where(mask, depth, torch.full_like(depth, 1.0 + self.prior.box_half_size))
            mask = torch.ones_like(mask)
        return {"rgb": rgb.to(device), "depth": depth.to(device), "mask": mask.to(device),
                "distance": distance.to(device),
                "directions": torch.from_numpy(np.stack(directions)).float().to(device)}

    def terms(self, output: dict, targets: dict) -> dict[str, torch.Tensor]:
        """The unweighted loss terms L_rgb, L_depth (over the depth mask, in ``prior.depth_units``), L_dist, L_norm,
        and ``depth_mae_m``, the mean absolute depth error in metres (a metric, not a loss)."""
        rgb_mse = F.mse_loss(output["rgb"].float(), targets["rgb"])
        mask = targets["mask"]
        error = output["depth"].float() - targets["depth"]  # units of the camera distance
        metres = error * targets["distance"][:, None]
        if self.prior.depth_units == "metres":
            error = metres
        count = mask.sum().clamp(min=1)
        return {"rgb_mse": rgb_mse, "depth_mse": (error.square() * mask).sum() / count, "distill": output["distill"],
                "density_l1": output["density_l1"], "depth_mae_m": (metres.abs() * mask).sum() / count}

    def loss(self, output: Any, targets: dict) -> torch.Tensor:
        w, t = self.prior.loss, self.terms(output, targets)
        return w.rgb * t["rgb_mse"] + w.depth * t["depth_mse"] + w.distill * t["distill"] + w.density_l1 * t["density_l1"]

    def metric_sums(self, output: Any, targets: dict) -> list[float]:
        n = targets["rgb"].shape[0]
        terms = self.terms(output, targets)
        return [float(terms[m].detach()) * n for m in METRICS]
