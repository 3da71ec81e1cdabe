"""The neural data format: one HDF5 file per data set (documented in docs/neural-data-format.md).

Layout (``S`` stimuli, ``R`` repetitions, ``N`` neuroids, ``T`` optional time bins)::

    /                     attrs: format="flatland-neural", format_version=1, name, description, synthetic
    /stimuli/images       uint8 (S, H, W, 3)   RGB stimuli as shown
    /stimuli/id           str   (S,)           unique stimulus ids
    /stimuli/object       str   (S,)           object/category label, used to stratify splits
    /responses            float (S, R, N) or (S, R, N, T)  one response per presentation
    /neuroids/id          str   (N,)           unique neuroid ids (unit, channel, voxel)
    /neuroids/region      str   (N,)           region label of each neuroid (e.g. "V4", "IT")
    /time_bins            float (T, 2)         [start, end) in ms; only with 4-D responses

:func:`validate_neural_data` checks everything a scorer relies on and raises
:class:`NeuralDataError` naming the dataset and what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np

from services.common.errors import FlatlandError

FORMAT_NAME = "flatland-neural"
FORMAT_VERSION = 1
MIN_REPETITIONS_FOR_CEILING = 2


class NeuralDataError(FlatlandError, ValueError):
    """A neural data file that does not follow the format; the message names the problem."""


@dataclass
class NeuralData:
    """A neural data set in memory.

    Attributes
    ----------
    images : (S, H, W, 3) uint8
    stimulus_ids : (S,) str
    objects : (S,) str
        Object/category label of each stimulus (stratifies the splits).
    responses : (S, R, N) or (S, R, N, T) float32
        Response of each neuroid to each presentation (repetition) of each stimulus.
    neuroid_ids : (N,) str
    regions : (N,) str
    time_bins : (T, 2) float64 or None
    name, description : str
    synthetic : bool
        True for generated (planted) data sets; they are test data, not recordings.
    """

    images: np.ndarray
    stimulus_ids: np.ndarray
    objects: np.ndarray
    responses: np.ndarray
    neuroid_ids: np.ndarray
    regions: np.ndarray
    time_bins: np.ndarray | None = None
    name: str = ""
    description: str = ""
    synthetic: bool = False
    attrs: dict = field(default_factory=dict)

    @property
    def n_stimuli(self) -> int:
        return int(self.responses.shape[0])

    @property
    def n_repetitions(self) -> int:
        return int(self.responses.shape[1])

    @property
    def n_neuroids(self) -> int:
        return int(self.responses.shape[2])

    def region_names(self) -> list[str]:
        """Regions in order of first appearance."""
        _, first = np.unique(self.regions, return_index=True)
        return [str(self.regions[i]) for i in sorted(first)]

    def presentations(self, time_window_ms: tuple[float, float] | None = None) -> np.ndarray:
        """Responses with time bins averaged: (S, R, N) float64.

        ``time_window_ms`` ``(start, end)``: average only the bins lying wholly inside
        it (``bin start >= start`` and ``bin end <= end``); None: all bins.

        Raises
        ------
        NeuralDataError
            A window on data without time bins, or a window containing no bin.
        """
        r = self.responses.astype(np.float64)
        if time_window_ms is None:
            return r.mean(axis=3) if r.ndim == 4 else r
        start, end = (float(v) for v in time_window_ms)
        if r.ndim != 4 or self.time_bins is None:
            raise NeuralDataError(f"{self.name or 'neural data'}: time_window_ms {[start, end]} given but /responses "
                                  f"has no time axis (shape {r.shape})")
        inside = (self.time_bins[:, 0] >= start) & (self.time_bins[:, 1] <= end)
        if not inside.any():
            raise NeuralDataError(f"{self.name or 'neural data'}: no time bin lies inside time_window_ms {[start, end]}; "
                                  f"/time_bins are {self.time_bins.tolist()}")
        return r[..., inside].mean(axis=3)

    def mean_responses(self, time_window_ms: tuple[float, float] | None = None) -> np.ndarray:
        """Repetition-averaged responses (S, N) float64 (time bins averaged too, within the window if given)."""
        return self.presentations(time_window_ms).mean(axis=1)

    def stimulus_set_hash(self) -> str:
        """SHA-256 of the stimulus images (shape and bytes): the feature cache key."""
        digest = hashlib.sha256(repr(self.images.shape).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        return digest.hexdigest()


def _text(values) -> np.ndarray:
    return np.asarray([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()], dtype=object)


def validate_neural_data(data: NeuralData, source: str = "neural data") -> NeuralData:
    """Check shapes, labels and values; return ``data`` unchanged or raise :class:`NeuralDataError`.

    Raises
    ------
    NeuralDataError
        On a shape mismatch between responses, stimuli and neuroids; missing or empty
        region or object labels; duplicate ids; NaN or infinite responses; fewer than two
        repetitions (no noise ceiling is possible); too few stimuli per object for a
        stratified split; bad image dtype or shape; bad time bins.
    """
    r = data.responses
    if r.ndim not in (3, 4):
        raise NeuralDataError(
            f"{source}: /responses must be (stimuli, repetitions, neuroids) or (stimuli, repetitions, neuroids, time_bins), "
            f"got {r.ndim}-D shape {r.shape}"
        )
    if not np.issubdtype(r.dtype, np.floating):
        raise NeuralDataError(f"{source}: /responses must be floating point, got {r.dtype}")
    n_stim, n_rep, n_neur = r.shape[:3]
    img = data.images
    if img.ndim != 4 or img.shape[-1] != 3:
        raise NeuralDataError(f"{source}: /stimuli/images must be (stimuli, height, width, 3) RGB, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise NeuralDataError(f"{source}: /stimuli/images must be uint8, got {img.dtype}")
    for label, arr, expected, what in (
        ("/stimuli/images", img, n_stim, "stimuli"),
        ("/stimuli/id", data.stimulus_ids, n_stim, "stimuli"),
        ("/stimuli/object", data.objects, n_stim, "stimuli"),
        ("/neuroids/id", data.neuroid_ids, n_neur, "neuroids"),
        ("/neuroids/region", data.regions, n_neur, "neuroids"),
    ):
        if len(arr) != expected:
            raise NeuralDataError(
                f"{source}: shape mismatch: {label} has {len(arr)} entries but /responses {r.shape} has {expected} {what}"
            )
    empty_regions = [str(data.neuroid_ids[i]) for i in np.flatnonzero([not str(x).strip() for x in data.regions])]
    if empty_regions:
        raise NeuralDataError(
            f"{source}: missing region labels in /neuroids/region for {len(empty_regions)} neuroid(s), e.g. {empty_regions[:5]}"
        )
    empty_objects = np.flatnonzero([not str(x).strip() for x in data.objects])
    if empty_objects.size:
        raise NeuralDataError(f"{source}: missing object labels in /stimuli/object for stimuli {empty_objects[:5].tolist()}")
    for label, ids in (("/stimuli/id", data.stimulus_ids), ("/neuroids/id", data.neuroid_ids)):
        uniq, counts = np.unique(ids.astype(str), return_counts=True)
        if (counts > 1).any():
            raise NeuralDataError(f"{source}: {label} has duplicate ids, e.g. {uniq[counts > 1][:5].tolist()}")
    bad = ~np.isfinite(r)
    if bad.any():
        where = np.argwhere(bad)
        s, rep, n = where[0][:3]
        raise NeuralDataError(
            f"{source}: /responses has {int(bad.sum())} NaN or infinite value(s), first at stimulus {s} "
            f"({data.stimulus_ids[s]}), repetition {rep}, neuroid {n} ({data.neuroid_ids[n]}); "
            "drop or impute missing presentations before writing"
        )
    if n_rep < MIN_REPETITIONS_FOR_CEILING:
        raise NeuralDataError(
            f"{source}: too few repetitions for a noise ceiling: /responses has {n_rep} repetition(s) per stimulus, "
            f"the noise ceiling needs at least {MIN_REPETITIONS_FOR_CEILING}"
        )
    if r.ndim == 4:
        if data.time_bins is None:
            raise NeuralDataError(f"{source}: 4-D /responses need /time_bins of shape ({r.shape[3]}, 2)")
        if data.time_bins.shape != (r.shape[3], 2):
            raise NeuralDataError(
                f"{source}: shape mismatch: /time_bins is {data.time_bins.shape}, /responses has {r.shape[3]} time bins"
            )
        if not np.all(data.time_bins[:, 1] > data.time_bins[:, 0]):
            raise NeuralDataError(f"{source}: /time_bins rows must be [start, end) with end > start")
    elif data.time_bins is not None:
        raise NeuralDataError(f"{source}: /time_bins given but /responses has no time axis (shape {r.shape})")
    _, per_object = np.unique(data.objects.astype(str), return_counts=True)
    if per_object.min() < 2:
        raise NeuralDataError(
            f"{source}: every object label needs at least 2 stimuli for stratified splits; "
            f"{int((per_object < 2).sum())} object(s) have only one"
        )
    return data


def write_neural_data(target: str | os.PathLike | BinaryIO, data: NeuralData) -> None:
    """Validate ``data`` and write it as HDF5 to a path or a binary file object."""
    validate_neural_data(data, data.name or "neural data")
    strings = h5py.string_dtype("utf-8")
    with h5py.File(target, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["name"] = data.name
        f.attrs["description"] = data.description
        f.attrs["synthetic"] = bool(data.synthetic)
        for key, value in data.attrs.items():
            f.attrs[key] = value
        stim = f.create_group("stimuli")
        stim.create_dataset("images", data=data.images, compression="gzip", compression_opts=4, chunks=True)
        stim.create_dataset("id", data=data.stimulus_ids.astype(str).astype(object), dtype=strings)
        stim.create_dataset("object", data=data.objects.astype(str).astype(object), dtype=strings)
        f.create_dataset("responses", data=data.responses, compression="gzip", compression_opts=4, chunks=True)
        neur = f.create_group("neuroids")
        neur.create_dataset("id", data=data.neuroid_ids.astype(str).astype(object), dtype=strings)
        neur.create_dataset("region", data=data.regions.astype(str).astype(object), dtype=strings)
        if data.time_bins is not None:
            f.create_dataset("time_bins", data=np.asarray(data.time_bins, dtype=np.float64))


def neural_data_bytes(data: NeuralData) -> bytes:
    """The HDF5 file of ``data`` as bytes (to put in the store)."""
    buffer = io.BytesIO()
    write_neural_data(buffer, data)
    return buffer.getvalue()


def read_neural_data(source: str | os.PathLike | bytes | BinaryIO, name: str | None = None) -> NeuralData:
    """Read and validate a neural data file (path, bytes or binary file object).

    Raises
    ------
    NeuralDataError
        When the file is not HDF5, lacks a required dataset, or fails validation.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "neural data")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise NeuralDataError(f"{label}: no such file")
    try:
        f = h5py.File(source, "r")
    except OSError as exc:
        raise NeuralDataError(f"{label}: not a readable HDF5 file ({exc})") from None
    with f:
        fmt = f.attrs.get("format")
        if fmt is not None and (fmt.decode() if isinstance(fmt, bytes) else str(fmt)) != FORMAT_NAME:
            raise NeuralDataError(f"{label}: attribute format is {fmt!r}, expected {FORMAT_NAME!r}")
        version = int(f.attrs.get("format_version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise NeuralDataError(f"{label}: format_version {version} is newer than this reader ({FORMAT_VERSION})")
        required = ["stimuli/images", "stimuli/object", "responses", "neuroids/region"]
        missing = [k for k in required if k not in f]
        if missing:
            hint = " (every neuroid needs a region label)" if "neuroids/region" in missing else ""
            raise NeuralDataError(f"{label}: missing required dataset(s) {', '.join('/' + m for m in missing)}{hint}")
        responses = np.asarray(f["responses"][()])
        images = np.asarray(f["stimuli/images"][()])
        n_stim = responses.shape[0] if responses.ndim else 0
        n_neur = responses.shape[2] if responses.ndim >= 3 else 0
        stimulus_ids = _text(f["stimuli/id"][()]) if "stimuli/id" in f else np.asarray([f"stim{i}" for i in range(n_stim)], dtype=object)
        neuroid_ids = _text(f["neuroids/id"][()]) if "neuroids/id" in f else np.asarray([f"n{i}" for i in range(n_neur)], dtype=object)
        data = NeuralData(
            images=images,
            stimulus_ids=stimulus_ids,
            objects=_text(f["stimuli/object"][()]),
            responses=responses,
            neuroid_ids=neuroid_ids,
            regions=_text(f["neuroids/region"][()]),
            time_bins=np.asarray(f["time_bins"][()]) if "time_bins" in f else None,
            name=str(f.attrs.get("name", name or "")),
            description=str(f.attrs.get("description", "")),
            synthetic=bool(f.attrs.get("synthetic", False)),
        )
    return validate_neural_data(data, label)
