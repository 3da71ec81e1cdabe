"""The 3D-prior objective: volume rendering against an analytic sphere, training on exact depth,
distillation, ablations, the backbone-only checkpoint, and rays that follow crops and flips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision

from services.common.errors import FlatlandError, ObjectNotFoundError, SpecError
from services.common.spec.experiment import parse_spec
from services.train.data import ShardStream, dataset_shards, make_loader, to_model_input
from services.train.loop import pretrain
from services.train.models import load_verified_checkpoint
from services.train.objectives import objective_for
from services.train.objectives.prior3d import composite, ray_directions, render_rays
from tests.train.prior_shards import sphere_depth, sphere_members
from tests.train.synthetic_shards import write_dataset

TINY = {"token_grid": 4, "token_dim": 32, "attention_heads": 4, "triplane_resolution": 16, "triplane_channels": 8,
        "mlp_hidden": 32, "render_size": 16}


def make_spec(runs=None, **run):
    base = {"name": "p", "datasets": ["spheres"], "objective": "3d_prior", "model": "resnet18", "input_size": 32,
            "epochs": 1, "batch_size": 8, "workers": 0, "prior": dict(TINY)}
    base.update(run)
    return parse_spec({"name": "t", "datasets": [{"name": "spheres", "family": {"family": "procsynth"}, "classes": 3}],
                       "pretrain": runs or [base]})


def render(store, spec, train=16, val=4):
    write_dataset(store, spec.dataset_id("spheres"), classes=3, views={"train": train, "val": val}, size=32,
                  samples_per_shard=30, members=sphere_members)


def sphere_field(centre, radius, density=1e3):
    def field(points):
        inside = ((points - centre) ** 2).sum(-1) < radius**2
        return inside.float() * density, None
    return field


@pytest.mark.parametrize("importance", [0, 16])
@pytest.mark.parametrize("stratified", [False, True])
def test_volume_renderer_reproduces_the_analytic_depth_of_a_sphere(importance, stratified):
    torch.manual_seed(0)
    size, near, far, samples = 24, 0.6, 1.4, 16
    centre, radius = np.array([0.05, -0.1, -1.0]), 0.3
    k = np.array([0.5 * size / math.tan(math.radians(20))] * 2 + [size / 2] * 2)
    directions = ray_directions(k, np.array([[1.0, 0, 0], [0, 1.0, 0]]), None, size, size)
    truth = sphere_depth(size, centre, radius).ravel()  # the same camera, in units of the distance
    out = render_rays(sphere_field(torch.tensor(centre, dtype=torch.float32), radius),
                      torch.from_numpy(directions).float()[None], near, far, samples, importance, stratified=stratified)
    depth, opacity = out["depth"][0].numpy(), out["opacity"][0].numpy()
    hit = np.isfinite(truth)
    assert 50 < hit.sum() < size * size - 50
    spacing = (far - near) / samples
    error = np.abs(depth[hit] - truth[hit])
    # the first sample past the surface takes the weight: within one spacing of it for the strata's centres or
    # with importance samples; two jittered strata can leave a gap of up to two spacings
    assert error.max() < (2 * spacing if stratified and not importance else spacing), error.max()
    if importance:  # samples gather at the surface: well below one spacing on average
        assert error.mean() < spacing / 4, error.mean()
    assert np.all(opacity[~hit] < 1e-6) and np.allclose(depth[~hit], far)  # misses end at the far plane
    assert np.all(opacity[hit] > 0.999)
    assert out["densities"].shape == (1, size * size * (samples + importance))


def test_compositing_weights_follow_transmittance():
    t = torch.tensor([[[0.0, 1.0, 2.0]]])
    out = composite(torch.tensor([[[0.0, math.log(2.0), 1e9]]]), None, t, 3.0, torch.ones(1, 1))
    # nothing in [0, 1); half absorbed in [1, 2); the rest at 2
    assert torch.allclose(out["weights"], torch.tensor([[[0.0, 0.5, 0.5]]]), atol=1e-6)
    assert torch.allclose(out["depth"], torch.tensor([[1.5]]), atol=1e-6)


def test_rays_follow_crops_and_flips():
    k = np.array([40.0, 40.0, 16.0, 16.0])
    plain = ray_directions(k, np.array([[1.0, 0, 0], [0, 1.0, 0]]), None, 32, 4)
    flipped = ray_directions(k, np.array([[-1.0, 0, 32.0], [0, 1.0, 0]]), None, 32, 4)
    # a flipped input's pixel j sees what the stored image's pixel 3 - j saw: x mirrored, y and z kept
    assert np.allclose(flipped.reshape(4, 4, 3)[:, ::-1], plain.reshape(4, 4, 3))
    assert np.allclose(flipped[:, 0], -plain[:, 0]) and not np.allclose(plain[:, 0], 0)
    # the left half of the image, resized to the input: rays span half the field
    half = ray_directions(k, np.array([[0.5, 0, 0], [0, 1.0, 0]]), None, 32, 4)
    assert np.isclose(half[:, 0].min(), (0.5 * 4 - 16) / 40) and np.isclose(half[:, 0].max(), (0.5 * 28 - 16) / 40)
    # a FlatWorld record's planar map is undone: a flipped canonical render's rays come back unflipped
    planar = np.array([[-1.0, 0, 32.0], [0, 1.0, 0]])
    assert np.allclose(ray_directions(k, np.array([[-1.0, 0, 32.0], [0, 1.0, 0]]), planar, 32, 4), plain)


def test_the_shard_index_locates_depth_and_records_without_a_pass_over_the_tar(local_store, monkeypatch):
    import services.train.data as data
    from services.render.api import shard_index_key

    spec = make_spec()
    render(local_store, spec, train=4, val=1)
    shard = dataset_shards(local_store, spec.dataset_id("spheres"), "train")[0]
    document = local_store.get_json(shard_index_key(shard.key))
    assert set(document["members"]) == {"depth.png", "json"}
    assert all(len(column) == len(document["samples"]) for column in document["members"].values())
    scanned = data._scan_index(local_store, shard, members=("depth.png", "json"))
    data._INDEXES.clear()
    monkeypatch.setattr(data, "_scan_index", lambda *a, **k: pytest.fail("scanned a shard whose index lists its members"))
    indexed = data.shard_index(local_store, shard, members=("depth.png", "json"))
    assert np.array_equal(indexed.offsets, scanned.offsets) and indexed.unusable == scanned.unusable == 0
    for name in ("depth.png", "json"):
        for a, b in zip(indexed.members[name], scanned.members[name]):
            assert np.array_equal(a, b)
    # an index written before the members table (or a damaged one) is still read: by one pass over the tar
    monkeypatch.undo()
    data._INDEXES.clear()
    document["members"]["json"] = document["members"]["json"][:-1]
    local_store.put_json(shard_index_key(shard.key), document)
    assert np.array_equal(data.shard_index(local_store, shard, members=("json",)).members["json"][0],
                          scanned.members["json"][0])


def test_augmented_batches_carry_depth_records_and_matching_views(local_store):
    spec = make_spec()
    render(local_store, spec, train=4, val=1)
    run = spec.pretrain[0]
    shards = dataset_shards(local_store, spec.dataset_id("spheres"), "train")
    stream = ShardStream(local_store.url, shards, [np.arange(3)], input_size=32, augment=run.augment,
                         members=("depth.png", "json"))
    flips = 0
    for sample in stream:
        view = sample["view"].numpy()
        record = json.loads(sample["record"])
        k = record["camera"]["intrinsics"]
        intrinsics = np.array([k["fx"], k["fy"], k["cx"], k["cy"]])
        depth_m = sample["depth"].numpy().ravel() * 1e-3
        surface = depth_m > 0
        assert surface.mean() > 0.1

        def off_surface(view_map):
            # points where the augmented pixels' rays meet the loader's (cropped, resized, flipped) depth
            points = ray_directions(intrinsics, view_map, None, 32, 32)[surface] * depth_m[surface, None]
            centre, radius = np.array(record["sphere"]["centre"]), record["sphere"]["radius"]
            return np.median(np.abs(np.linalg.norm(points - centre, axis=1) - radius))

        # on the sphere, to within the depth's nearest-neighbour resampling
        assert off_surface(view) < 0.03, off_surface(view)
        if view[0, 0] < 0:  # flipped: rays that ignored the flip would miss the sphere
            flips += 1
            a, b = view[0, 0], view[0, 2]
            unflipped = np.array([[-a, 0.0, b + a * 32], [0.0, view[1, 1], view[1, 2]]])
            assert off_surface(unflipped) > 2 * off_surface(view) + 0.01
    assert 0 < flips < 12  # some flipped, some not


def train_steps(spec, store, steps: int, lr: float):
    """Per-step loss terms of ``steps`` Adam steps of the run's objective (the loop's pieces, no epochs)."""
    run = spec.pretrain[0]
    torch.manual_seed(0)
    objective = objective_for(run)
    model = objective.build_model(3)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    shards = dataset_shards(store, spec.dataset_id("spheres"), "train")
    history = []
    epoch = 0
    while len(history) < steps:
        stream = ShardStream(store.url, shards, [np.arange(3)], input_size=run.input_size, augment=run.augment,
                             epoch=epoch, members=objective.reads_members)
        for batch in make_loader(stream, batch_size=run.batch_size, workers=0, train=True):
            x = to_model_input(batch["image"], torch.device("cpu"), mean=run.mean, std=run.std)
            y = objective.targets(batch, torch.device("cpu"))
            output = objective.forward(model, x, y)
            loss = objective.loss(output, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append({"loss": float(loss.detach()),
                            **{k: float(v.detach()) for k, v in objective.terms(output, y).items()}})
            if len(history) == steps:
                break
        epoch += 1
    return history


def test_losses_decrease_and_distillation_starts_at_zero(local_store):
    spec = make_spec(batch_size=4)
    render(local_store, spec, train=16)
    history = train_steps(spec, local_store, 40, lr=1e-3)
    assert history[0]["distill"] == 0.0  # the backbone equals its frozen copy before the first step
    assert history[1]["distill"] > 0.0
    first, last = history[:8], history[-8:]
    # measured here: rgb 0.095 -> 0.047, depth 0.160 -> 0.065 (squared camera distances)
    for term in ("rgb_mse", "depth_mse", "depth_mae_m"):
        before, after = np.mean([h[term] for h in first]), np.mean([h[term] for h in last])
        assert after < 0.7 * before, (term, before, after)


def test_depth_loss_units():
    targets = {"rgb": torch.zeros(2, 3, 2, 2), "depth": torch.ones(2, 4), "distance": torch.tensor([3.0, 10.0]),
               "mask": torch.tensor([[True, True, False, False], [True, False, False, False]])}
    output = {"rgb": torch.zeros(2, 3, 2, 2), "depth": torch.full((2, 4), 1.1), "distill": torch.tensor(0.0),
              "density_l1": torch.tensor(0.0)}
    terms = {}
    for units in ("camera_distance", "metres"):
        run = make_spec(prior={**TINY, "depth_units": units}).pretrain[0]
        terms[units] = objective_for(run).terms(output, targets)
    # three masked pixels, each 0.1 camera distances off: 0.3 m, 0.3 m and 1 m
    assert torch.isclose(terms["camera_distance"]["depth_mse"], torch.tensor(0.01))
    assert torch.isclose(terms["metres"]["depth_mse"], torch.tensor((0.09 + 0.09 + 1.0) / 3))
    assert torch.isclose(terms["metres"]["depth_mae_m"], torch.tensor(1.6 / 3))


def test_conv_ablation_trains_without_distillation(local_store):
    spec = make_spec(batch_size=4, prior={**TINY, "decoder": "conv", "loss": {"distill": 0}})
    render(local_store, spec, train=8)
    model = objective_for(spec.pretrain[0]).build_model(3)
    assert model.teacher is None and model.field is None
    history = train_steps(spec, local_store, 24, lr=1e-3)
    assert all(h["distill"] == 0.0 and h["density_l1"] == 0.0 for h in history)
    assert np.mean([h["depth_mse"] for h in history[-8:]]) < 0.5 * np.mean([h["depth_mse"] for h in history[:8]])


def test_run_from_a_supervised_run_keeps_only_the_backbone(local_store):
    supervised = {"name": "sup", "datasets": ["spheres"], "model": "resnet18", "input_size": 32, "epochs": 1,
                  "batch_size": 8, "workers": 0, "optim": {"lr": 0.01, "warmup_epochs": 0}}
    prior = {"name": "p", "datasets": ["spheres"], "objective": "3d_prior", "model": "resnet18", "input_size": 32,
             "epochs": 1, "batch_size": 8, "workers": 0, "prior": dict(TINY), "init_from": "sup"}
    spec = make_spec(runs=[supervised, prior])
    render(local_store, spec, train=8, val=2)
    with pytest.raises(ObjectNotFoundError, match="starts from run 'sup', which has not finished"):
        pretrain(spec, "p", local_store)
    pretrain(spec, "sup", local_store)
    summary = pretrain(spec, "p", local_store)
    assert summary["final"]["val_samples"] == 6 and summary["final"]["train_depth_mse"] > 0
    start = load_verified_checkpoint(local_store, f"runs/{spec.run_id('sup')}")
    ckpt = load_verified_checkpoint(local_store, f"runs/{spec.run_id('p')}")
    # only the backbone: it loads strictly into the torchvision model, and its head is the supervised run's
    model = torchvision.models.get_model(ckpt["model"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == set(model.state_dict())
    assert torch.equal(ckpt["state_dict"]["fc.weight"], start["state_dict"]["fc.weight"])
    assert not torch.equal(ckpt["state_dict"]["conv1.weight"], start["state_dict"]["conv1.weight"])
    assert ckpt["spec"]["task"] == "3d_prior"
    # evaluation (shape bias, depth probe) reads it like any backbone, deciding by a probe: its head is the source's
    from services.train.evaluation import load_network

    net = load_network(spec, local_store, "p", device=torch.device("cpu"))
    assert isinstance(net.module, torchvision.models.ResNet) and not net.classification
    assert load_network(spec, local_store, "sup", device=torch.device("cpu")).classification
    # the run's id follows the run it starts from
    other = make_spec(runs=[{**supervised, "epochs": 2}, prior])
    assert other.run_id("p") != spec.run_id("p") and other.run_id("sup") != spec.run_id("sup")


def test_spec_checks_the_3d_prior_fields():
    with pytest.raises(SpecError, match="init_from: unknown pretrain run 'nope'"):
        make_spec(init_from="nope")
    sup = {"name": "sup", "datasets": ["spheres"], "model": "resnet50"}
    with pytest.raises(SpecError, match="trains resnet50, this run resnet18"):
        make_spec(runs=[sup, {"name": "p", "datasets": ["spheres"], "objective": "3d_prior", "model": "resnet18",
                              "init_from": "sup"}])
    with pytest.raises(SpecError, match="must be listed before"):
        make_spec(runs=[{"name": "p", "datasets": ["spheres"], "objective": "3d_prior", "init_from": "sup"}, sup])
    with pytest.raises(SpecError, match="attention_heads"):
        make_spec(prior={**TINY, "attention_heads": 5})
    with pytest.raises(SpecError, match="prior: settings of task 3d_prior"):
        make_spec(objective="classification")
    defaults = parse_spec({"name": "t", "datasets": [{"name": "s", "family": {"family": "procsynth"}}],
                           "pretrain": [{"name": "p", "datasets": ["s"], "objective": "3d_prior"}]}).pretrain[0]
    assert defaults.model == "resnet50" and defaults.augment.random_resized_crop and defaults.augment.horizontal_flip
    assert (defaults.epochs, defaults.optim.optimizer, defaults.optim.lr, defaults.optim.schedule) == (10, "adam", 1e-4, "constant")
    assert (defaults.prior.token_grid, defaults.prior.triplane_resolution, defaults.prior.samples_per_ray) == (16, 128, 16)
    assert (defaults.prior.loss.rgb, defaults.prior.loss.depth, defaults.prior.loss.distill,
            defaults.prior.loss.density_l1) == (0.1, 1.0, 1.0, 1e-3)
    with pytest.raises(SpecError, match="transfers train with SGD"):
        parse_spec({"name": "t", "transfer": [{"name": "x", "pretrained": [], "targets": ["d"],
                                               "optim": {"optimizer": "adam"}}], "targets": [{"name": "d", "kind": "digits"}]})


def test_records_without_a_camera_are_refused(local_store):
    from tests.train.synthetic_shards import sample_members

    spec = make_spec()
    write_dataset(local_store, spec.dataset_id("spheres"), classes=3, views={"train": 8, "val": 0}, size=32,
                  members=sample_members)
    with pytest.raises(FlatlandError, match="has no camera"):
        pretrain(spec, "p", local_store)


def write_folder(folder, count=6, size=32):
    from PIL import Image

    from services.render.api import decode_depth, decode_rgb

    folder.mkdir()
    for i in range(count):
        members = sphere_members(i % 3, 0, i, 3, size, seed=1)
        Image.fromarray(decode_rgb(members["rgb.png"])).save(folder / f"img{i}.png")
        depth = decode_depth(members["depth.png"]).astype(np.float64)
        np.save(folder / f"img{i}.depth.npy", np.where(np.isfinite(depth), depth, np.nan))


def test_an_image_folder_with_depth_maps_trains_the_prior(local_store, tmp_path):
    folder = tmp_path / "natural"
    write_folder(folder)
    spec = make_spec(datasets=[], batch_size=3, epochs=1, prior={**TINY, "image_folder": str(folder), "fov_deg": 40})
    summary = pretrain(spec, "p", local_store)
    assert [r["train_samples"] for r in [summary["final"]]] == [6] and summary["final"]["train_depth_mse"] > 0
    ckpt = load_verified_checkpoint(local_store, f"runs/{spec.run_id('p')}")
    model = torchvision.models.get_model(ckpt["model"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["state_dict"])
    # bad input is named
    (folder / "img0.depth.npy").unlink()
    with pytest.raises(FlatlandError, match=r"1 image\(s\) in .* have no depth map beside them .*img0.png"):
        pretrain(make_spec(datasets=[], epochs=3, prior={**TINY, "image_folder": str(folder)}), "p", local_store)
    np.save(folder / "img0.depth.npy", np.ones((5, 5)))
    with pytest.raises(FlatlandError, match=r"img0.depth.npy: depth must be a 2-D numeric array of its image's size"):
        pretrain(make_spec(datasets=[], epochs=4, batch_size=6, prior={**TINY, "image_folder": str(folder)}), "p",
                 local_store)
    with pytest.raises(SpecError, match="remove datasets"):
        make_spec(prior={**TINY, "image_folder": str(folder)})


@pytest.mark.slow
def test_two_gloo_ranks_train_the_prior_to_identical_networks(tmp_path):
    from services.common.store import LocalStore
    from tests.train.test_distributed import run_two_ranks

    store = LocalStore(tmp_path / "store")
    spec = make_spec(epochs=1, batch_size=4, workers=0)
    render(store, spec, train=8, val=2)
    out = tmp_path / "out"
    out.mkdir()
    done = run_two_ranks(store, spec, out, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"keys-{r}.json").read_text()) for r in range(2)]
    a, b = (set(r["keys"]["0"]) for r in ranks)
    assert a and b and not a & b  # disjoint shares of the rays' images
    weights = [torch.load(out / f"weights-{r}.pt") for r in range(2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # decoder, field, backbone alike
    # rank 0's final checkpoint is its backbone alone
    ckpt = load_verified_checkpoint(store, f"runs/{spec.run_id('p')}")
    assert all(torch.equal(v, weights[0][f"backbone.net.{k}"]) for k, v in ckpt["state_dict"].items())


def test_any_run_can_start_from_another(local_store):
    base = {"datasets": ["spheres"], "model": "resnet18", "input_size": 32, "epochs": 1, "batch_size": 8, "workers": 0}
    spec = make_spec(runs=[{"name": "a", **base, "optim": {"lr": 0.05, "warmup_epochs": 0}},
                           {"name": "b", **base, "init_from": "a", "seed": 1,
                            "optim": {"lr": 1e-7, "warmup_epochs": 0, "schedule": "constant", "weight_decay": 0}}])
    render(local_store, spec, train=8, val=2)
    pretrain(spec, "a", local_store)
    pretrain(spec, "b", local_store)
    a, b = (load_verified_checkpoint(local_store, f"runs/{spec.run_id(n)}")["state_dict"] for n in "ab")
    # b barely moved from a's weights (a fresh initialisation, with another seed, would be far from them)
    assert torch.allclose(a["conv1.weight"], b["conv1.weight"], atol=1e-4)
    assert torch.allclose(a["fc.weight"], b["fc.weight"], atol=1e-4)
