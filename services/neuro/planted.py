"""The planted benchmark: SYNTHETIC neural data with known ground truth (test data, not recordings).

Stimuli are simple coloured shapes drawn with numpy (one shape, colour and aspect
per object label; position, size, rotation and background vary per stimulus). A
fixed network (a torchvision model with seeded random initialisation) sees them;
the responses of every neuroid are a fixed random linear map of one chosen layer's
features, standardised to unit variance, plus Gaussian noise per presentation
whose variance makes the reliability of the repetition average exactly the planted
value: with ``R`` repetitions and signal variance 1, noise variance per
presentation is ``R (1 − rel) / rel``, so ``1 / (1 + σ²/R) = rel``.

A scorer run on the fixed network must rank the planted layer first, and the
noise ceiling (:func:`~services.neuro.predictivity.reliability_ceiling`) must come out near ``rel``.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

from services.common.seeds import derive_rng, derive_seed
from services.common.spec.experiment import content_hash
from services.common.spec.neuro import NeuralDataSpec
from services.common.store import Store
from services.neuro.dataformat import NeuralData, neural_data_bytes
from services.neuro.features import checkpoint_bytes, extract_features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PLANTED_CLASSES = 10
SHAPES = ("ellipse", "rectangle", "triangle", "ring", "cross")
REGION = "planted"


def planted_key(spec: NeuralDataSpec) -> str:
    """Store key of a planted data set: ``neural/<name>-<hash of its spec>/data.h5``."""
    return f"neural/{spec.name}-{content_hash(spec)}/data.h5"


def planted_network(spec: NeuralDataSpec) -> torch.nn.Module:
    """The fixed network: ``spec.planted_model`` with random weights seeded from ``spec.seed`` (eval mode).

    Torch's global generator is forked and restored, so the caller's random state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(spec.seed, "neuro", "planted-network", spec.planted_model))
        model = torchvision.models.get_model(spec.planted_model, num_classes=PLANTED_CLASSES)
    return model.eval()


def planted_checkpoint(spec: NeuralDataSpec) -> bytes:
    """The fixed network as a checkpoint in the train stage's format (to score it like a trained run)."""
    return checkpoint_bytes(planted_network(spec), spec.planted_model, PLANTED_CLASSES, spec.image_size,
                            IMAGENET_MEAN, IMAGENET_STD, spec={"planted": spec.model_dump(mode="json")})


def generate_stimuli(n_stimuli: int, n_objects: int, size: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coloured shapes on noisy gradient backgrounds.

    Returns
    -------
    images : (n_stimuli, size, size, 3) uint8
    objects : (n_stimuli,) str, ``object-<k>``; stimuli cycle through objects so each has
        ``n_stimuli // n_objects`` or one more.
    """
    obj_rng = derive_rng(seed, "neuro", "planted-objects")
    shape_of = np.arange(n_objects) % len(SHAPES)
    colour_of = obj_rng.uniform(0.1, 1.0, size=(n_objects, 3))
    aspect_of = obj_rng.uniform(0.5, 1.0, size=n_objects)

    rng = derive_rng(seed, "neuro", "planted-stimuli")
    obj = np.arange(n_stimuli) % n_objects
    centre = rng.uniform(-0.35, 0.35, size=(n_stimuli, 2))
    scale = rng.uniform(0.25, 0.5, size=n_stimuli)
    angle = rng.uniform(0, np.pi, size=n_stimuli)
    bg_a = rng.uniform(0.0, 0.5, size=(n_stimuli, 3))
    bg_b = rng.uniform(0.0, 0.5, size=(n_stimuli, 3))

    coords = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    dx = xx[None] - centre[:, 0, None, None]
    dy = yy[None] - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / scale[:, None, None]
    v = (-sin * dx + cos * dy) / (scale * aspect_of[obj])[:, None, None]
    shape = shape_of[obj][:, None, None]
    masks = {
        0: u**2 + v**2 <= 1.0,
        1: (np.abs(u) <= 0.9) & (np.abs(v) <= 0.9),
        2: (v >= -0.8) & (np.abs(u) <= 0.55 * (1.0 - v)),
        3: (u**2 + v**2 <= 1.0) & (u**2 + v**2 >= 0.4),
        4: ((np.abs(u) <= 1.0) & (np.abs(v) <= 0.3)) | ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)),
    }
    mask = np.zeros_like(u, dtype=bool)
    for k, m in masks.items():
        mask |= (shape == k) & m

    t = (xx[None] + 1) / 2  # horizontal gradient background
    background = bg_a[:, None, None, :] * (1 - t[..., None]) + bg_b[:, None, None, :] * t[..., None]
    background = background + rng.normal(0, 0.05, size=background.shape)
    shading = 0.75 + 0.25 * np.clip(1 - (u**2 + v**2) / 2, 0, 1)
    foreground = colour_of[obj][:, None, None, :] * shading[..., None]
    image = np.where(mask[..., None], foreground, background)
    images = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    labels = np.asarray([f"object-{k:03d}" for k in obj], dtype=object)
    return images, labels


def generate_planted(spec: NeuralDataSpec) -> NeuralData:
    """Make the planted data set described by ``spec`` (kind 'planted')."""
    images, objects = generate_stimuli(spec.stimuli, spec.objects, spec.image_size, seed=spec.seed)
    model = planted_network(spec)
    features = extract_features(model, images, [spec.planted_layer], input_size=spec.image_size,
                                mean=IMAGENET_MEAN, std=IMAGENET_STD, pooling=spec.pooling)[spec.planted_layer]
    f = features.astype(np.float64)
    f = f[:, f.std(axis=0) > 1e-12]
    f = (f - f.mean(axis=0)) / f.std(axis=0)

    rng = derive_rng(spec.seed, "neuro", "planted-responses")
    weights = rng.normal(size=(f.shape[1], spec.neuroids)) / np.sqrt(f.shape[1])
    signal = f @ weights
    signal = (signal - signal.mean(axis=0)) / signal.std(axis=0)
    noise_sd = np.sqrt(spec.repetitions * (1 - spec.reliability) / spec.reliability)
    noise = rng.normal(0.0, noise_sd, size=(spec.stimuli, spec.repetitions, spec.neuroids))
    responses = (signal[:, None, :] + noise).astype(np.float32)

    return NeuralData(
        images=images,
        stimulus_ids=np.asarray([f"planted-{i:05d}" for i in range(spec.stimuli)], dtype=object),
        objects=objects,
        responses=responses,
        neuroid_ids=np.asarray([f"planted-n{i:05d}" for i in range(spec.neuroids)], dtype=object),
        regions=np.asarray([REGION] * spec.neuroids, dtype=object),
        name=spec.name,
        description=(
            f"SYNTHETIC planted benchmark (test data, not a recording): responses are a fixed random linear map of "
            f"{spec.planted_model} {spec.planted_layer} features ({spec.pooling} pooling, seeded random weights) plus "
            f"Gaussian noise; planted reliability of the repetition average {spec.reliability}."
        ),
        synthetic=True,
        attrs={"planted_layer": spec.planted_layer, "planted_model": spec.planted_model,
               "planted_reliability": float(spec.reliability), "seed": int(spec.seed)},
    )


def ensure_planted(store: Store, spec: NeuralDataSpec) -> str:
    """Generate the planted data set into the store unless it is there; return its key."""
    key = planted_key(spec)
    if not store.exists(key):
        store.put_bytes(key, neural_data_bytes(generate_planted(spec)))
    return key
