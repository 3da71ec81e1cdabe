"""The HDF5 neural data format: round trip and clear errors for bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from services.neuro.dataformat import NeuralData, NeuralDataError, neural_data_bytes, read_neural_data, write_neural_data


def _data(stimuli=8, reps=3, neuroids=5, time_bins=None):
    rng = np.random.default_rng(0)
    shape = (stimuli, reps, neuroids) + ((time_bins,) if time_bins else ())
    return NeuralData(
        images=rng.integers(0, 255, size=(stimuli, 16, 16, 3), dtype=np.uint8),
        stimulus_ids=np.array([f"s{i}" for i in range(stimuli)], dtype=object),
        objects=np.array([f"o{i % 4}" for i in range(stimuli)], dtype=object),
        responses=rng.normal(size=shape).astype(np.float32),
        neuroid_ids=np.array([f"n{i}" for i in range(neuroids)], dtype=object),
        regions=np.array(["V4", "V4", "IT", "IT", "IT"][:neuroids], dtype=object),
        time_bins=np.array([[70.0 + 10 * t, 80.0 + 10 * t] for t in range(time_bins)]) if time_bins else None,
        name="toy",
    )


def test_round_trip(tmp_path):
    data = _data(time_bins=2)
    write_neural_data(tmp_path / "toy.h5", data)
    back = read_neural_data(tmp_path / "toy.h5")
    np.testing.assert_array_equal(back.responses, data.responses)
    np.testing.assert_array_equal(back.images, data.images)
    assert back.region_names() == ["V4", "IT"] and list(back.objects) == list(data.objects)
    assert back.mean_responses().shape == (8, 5)
    assert read_neural_data(neural_data_bytes(data)).stimulus_set_hash() == data.stimulus_set_hash()


def _rewrite(tmp_path, mutate):
    path = tmp_path / "bad.h5"
    write_neural_data(path, _data())
    with h5py.File(path, "a") as f:
        mutate(f)
    return path


@pytest.mark.parametrize("mutate, message", [
    (lambda f: (f.__delitem__("neuroids/region")), "neuroids/region.*every neuroid needs a region"),
    (lambda f: (f.__delitem__("neuroids/region"), f["neuroids"].create_dataset("region", data=["V4", "", "IT", "IT", "IT"])), "missing region labels"),
    (lambda f: (f.__delitem__("neuroids/region"), f["neuroids"].create_dataset("region", data=["V4", "IT"])), "shape mismatch: /neuroids/region has 2"),
    (lambda f: (f.__delitem__("stimuli/object"), f["stimuli"].create_dataset("object", data=["a"] * 7)), "shape mismatch: /stimuli/object has 7"),
    (lambda f: f["responses"].__setitem__((2, 1, 3), np.nan), "NaN or infinite.*stimulus 2.*repetition 1, neuroid 3"),
    (lambda f: (f.__delitem__("responses"), f.create_dataset("responses", data=np.zeros((8, 1, 5)))), "too few repetitions"),
    (lambda f: (f.__delitem__("responses"), f.create_dataset("responses", data=np.zeros((8, 5)))), "must be \\(stimuli, repetitions, neuroids\\)"),
])
def test_bad_files_get_clear_errors(tmp_path, mutate, message):
    with pytest.raises(NeuralDataError, match=message):
        read_neural_data(_rewrite(tmp_path, mutate))


def test_not_hdf5_and_missing_file(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(NeuralDataError, match="not a readable HDF5"):
        read_neural_data(tmp_path / "x.h5")
    with pytest.raises(NeuralDataError, match="no such file"):
        read_neural_data(tmp_path / "missing.h5")


def test_writer_refuses_invalid_data(tmp_path):
    data = _data()
    data.responses[0, 0, 0] = np.inf
    with pytest.raises(NeuralDataError, match="NaN or infinite"):
        write_neural_data(tmp_path / "x.h5", data)


def test_time_window_averages_the_bins_inside_it(tmp_path):
    data = _data(time_bins=4)  # bins [70,80) [80,90) [90,100) [100,110)
    write_neural_data(tmp_path / "toy.h5", data)
    back = read_neural_data(tmp_path / "toy.h5")
    r = data.responses.astype(np.float64)
    np.testing.assert_allclose(back.presentations((80, 100)), r[..., 1:3].mean(axis=3))
    np.testing.assert_allclose(back.presentations((75, 110)), r[..., 1:4].mean(axis=3))  # [70,80) is not wholly inside
    np.testing.assert_allclose(back.presentations(), r.mean(axis=3))
    np.testing.assert_allclose(back.mean_responses((70, 80)), r[..., 0].mean(axis=1))
    with pytest.raises(NeuralDataError, match=r"no time bin lies inside time_window_ms \[200.0, 300.0\].*70.0, 80.0"):
        back.presentations((200, 300))
    with pytest.raises(NeuralDataError, match="has no time axis"):
        _data().presentations((70, 170))
