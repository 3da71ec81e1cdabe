"""The full study's spec (experiments/beyond-flatland.yaml) trains what the proposal's Table 2 lists."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from services.common.spec import load_spec
from services.train.mixes import split_budget

FULL_SPEC = Path(__file__).resolve().parents[2] / "experiments" / "beyond-flatland.yaml"

#: Table 2 of the proposal, by dataset family; FractalDB is the fractal2d family.
TABLE_2 = [
    ("fractal2d",),
    ("procsynth",),
    ("morphsynth",),
    ("procsynth", "fractal2d"),
    ("procsynth", "morphsynth"),
    ("procsynth", "morphsynth", "fractal2d"),
]


def _families(spec, run) -> tuple[str, ...]:
    return tuple(sorted(spec.dataset(name).kind for name in run.datasets))


def _is_flatworld(dataset) -> bool:
    render = dataset.render
    return (dataset.meshes_from is not None and render is not None and not render.pose_variation
            and not render.illumination_variation)


def _synthetic(spec):
    """The supervised pre-training runs on synthetic data (Table 2 and the FlatWorld ablation); 3D-prior runs
    continue from one of them and are checked separately."""
    return [r for r in spec.pretrain if r.kind == "synthetic" and r.task != "3d_prior"]


def test_3d_prior_runs_continue_the_procsynth_and_morphsynth_runs_on_their_data():
    spec = load_spec(FULL_SPEC)
    priors = [r for r in spec.pretrain if r.task == "3d_prior"]
    runs = {r.name: r for r in spec.pretrain}
    assert sorted(_families(spec, r) for r in priors) == [("morphsynth",), ("procsynth",)]
    for run in priors:
        source = runs[run.init_from]
        assert source.task == "classification" and source.datasets == run.datasets and source.model == run.model


def test_pretraining_runs_are_table_2_plus_the_flatworld_ablation():
    spec = load_spec(FULL_SPEC)
    flatworld = [r for r in _synthetic(spec) if all(_is_flatworld(spec.dataset(n)) for n in r.datasets)]
    table_runs = [r for r in _synthetic(spec) if r not in flatworld]
    assert len(flatworld) == 1 and len(flatworld[0].datasets) == 1, "one FlatWorldDB ablation run, on FlatWorldDB alone"
    assert Counter(_families(spec, r) for r in table_runs) == Counter(tuple(sorted(m)) for m in TABLE_2)
    # the 3D datasets of every mix are the ones the FlatWorld ablation renders flat
    assert spec.dataset(flatworld[0].datasets[0]).meshes_from in {n for r in table_runs for n in r.datasets}


def test_every_run_has_a_1000_class_budget_split_evenly():
    spec = load_spec(FULL_SPEC)
    for run in _synthetic(spec):
        assert run.class_budget == 1000, run.name
        shares = split_budget(run.class_budget, len(run.datasets))
        assert len(set(shares)) == 1 and sum(shares) == 1000 - 1000 % len(run.datasets), (run.name, shares)
        assert all(spec.dataset(n).classes >= share for n, share in zip(run.datasets, shares)), run.name


def test_transfer_and_scoring_cover_every_pretraining_run():
    spec = load_spec(FULL_SPEC)
    names = {r.name for r in spec.pretrain}
    for entry in spec.transfer:
        assert set(entry.pretrained) == names, entry.name
    scored = [run for entry in spec.scoring for run in entry.runs]
    assert sorted(scored) == sorted(names)  # every run once (layers differ by architecture)


def test_imagenet_baselines_and_transfer_protocol_are_the_proposals():
    spec = load_spec(FULL_SPEC)
    baselines = {r.model: r.weights for r in spec.pretrain if r.kind == "torchvision_pretrained"}
    assert baselines == {"alexnet": "AlexNet_Weights.IMAGENET1K_V1", "vgg16": "VGG16_Weights.IMAGENET1K_V1",
                         "resnet50": "ResNet50_Weights.IMAGENET1K_V1"}
    kinds = {t.name: t.kind for t in spec.targets}
    assert kinds["voc2012"] == "voc2012" and kinds["omniglot"] == "omniglot"
    assert all(t.held_out == "official" for t in spec.targets)
    for entry in spec.transfer:
        assert entry.preset == "fractaldb" and entry.augment.random_crop and entry.epochs == 90
