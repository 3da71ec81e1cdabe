"""The built-in shape families, registered by name: procsynth, morphsynth, fractal2d, fitted.

Seeds. Class ``c`` of a family draws from ``derive_seed(root_seed, family, c)``
(morphsynth: its Nyström points; its class-level morph from
``derive_seed(root_seed, "morphsynth", c, "morph")``; its instances, which differ only
when ``instance_scale`` > 0, from ``derive_seed(root_seed, "morphsynth", c, instance)``).
The dataset name is deliberately not in the path: class ``c`` of ProcSynthDB is
one fixed shape for a given seed and parameters, which is what lets morphsynth
start from "the first 100 procsynth classes" of a procsynth dataset with the same
seed. Two datasets that should differ take different seeds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import trimesh

from services.common.seeds import derive_seed
from services.common.spec.meshgen import FittedParams, Fractal2DParams, MorphSynthParams, ProcSynthParams
from services.meshgen.fractal2d import IFSClass, ifs_variants, search_ifs
from services.meshgen.morphsynth import MorphModel
from services.meshgen.procsynth import ProcSynthShape, generate_base, procsynth_instance
from services.meshgen.family import GeneratedItem, ShapeFamily, class_dir, register_family


def export_glb(mesh: trimesh.Trimesh) -> bytes:
    """GLB bytes of ``mesh`` (trimesh's exporter writes no timestamps, so equal meshes give equal bytes)."""
    return mesh.export(file_type="glb")


@functools.lru_cache(maxsize=16)
def _procsynth_base(params_json: str, seed: int) -> ProcSynthShape:
    # cached so the instances of one class (and repeated GenerateMesh calls) share one base draw
    return generate_base(ProcSynthParams.model_validate_json(params_json), seed)


@functools.lru_cache(maxsize=8)
def _morph_model(params_json: str, root_seed: int, class_index: int) -> MorphModel:
    params = MorphSynthParams.model_validate_json(params_json)
    base_class = class_index % params.base_classes
    base = _procsynth_base(params.base.model_dump_json(), derive_seed(root_seed, "procsynth", base_class))
    return MorphModel.build(base.mesh, params, derive_seed(root_seed, "morphsynth", class_index))


@register_family
class ProcSynthFamily(ShapeFamily):
    """Algorithm 1 of ProcSynthDB: a base union of primitives and its stretched variants."""

    name = "procsynth"
    params_type = ProcSynthParams

    def default_instances(self, params: ProcSynthParams) -> int:
        return params.meshes_per_class

    def generate_class(self, params, root_seed, class_index, instances: Sequence[int]) -> list[GeneratedItem]:
        params = self.parse_params(params)
        seed = derive_seed(root_seed, self.name, class_index)
        base = _procsynth_base(params.model_dump_json(), seed)
        items = []
        for instance in instances:
            mesh, stats = procsynth_instance(params, base, seed, instance)
            items.append(GeneratedItem(class_index, instance, seed, f"{class_dir(class_index)}/{instance}.glb",
                                       export_glb(mesh), stats, mesh))
        return items


@register_family
class MorphSynthFamily(ShapeFamily):
    """MorphSynthDB: a class is one GP shape-and-albedo morph of one of the first ``base_classes`` procsynth meshes.

    Three instances per class (``NATURAL_INSTANCES`` in services/render/plan.py says the
    same): identical meshes unless ``instance_scale`` > 0, since the render stage
    already varies pose and illumination per view.
    """

    name = "morphsynth"
    params_type = MorphSynthParams

    def default_instances(self, params: MorphSynthParams) -> int:
        return 3

    def generate_class(self, params, root_seed, class_index, instances: Sequence[int]) -> list[GeneratedItem]:
        params = self.parse_params(params)
        model = _morph_model(params.model_dump_json(), root_seed, class_index)
        class_seed = derive_seed(root_seed, self.name, class_index, "morph")
        items = []
        for instance in instances:
            seed = derive_seed(root_seed, self.name, class_index, instance)
            mesh, stats = model.sample(params, class_seed, instance_seed=seed)
            stats = {"vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
                     "extents": [round(float(x), 6) for x in mesh.extents],
                     "base_class": class_index % params.base_classes} | stats
            items.append(GeneratedItem(class_index, instance, seed, f"{class_dir(class_index)}/{instance}.glb",
                                       export_glb(mesh), stats, mesh))
        return items


@register_family
class Fractal2DFamily(ShapeFamily):
    """FractalDB: one IFS per class; instances are its weight variants, drawn by the render stage."""

    name = "fractal2d"
    params_type = Fractal2DParams

    def default_instances(self, params: Fractal2DParams) -> int:
        return 25

    def stored_instances(self, params, instances: int) -> list[int]:
        return [0]  # one class definition; the variants are derived with ifs_variants()

    def generate_class(self, params, root_seed, class_index, instances: Sequence[int]) -> list[GeneratedItem]:
        params = self.parse_params(params)
        if any(i != 0 for i in instances):
            raise ValueError("instance: fractal2d stores one IFS per class (instance 0); variants come from ifs_variants()")
        seed = derive_seed(root_seed, self.name, class_index)
        ifs: IFSClass = search_ifs(params, seed)
        data = json.dumps(ifs.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")
        stats = {"maps": int(len(ifs.maps)), "filling_rate": round(ifs.filling_rate, 6), "rejections": ifs.rejections,
                 "variants": len(ifs_variants(ifs.maps, params.weight_step))}
        return [GeneratedItem(class_index, 0, seed, f"{class_dir(class_index)}/ifs.json", data, stats, ifs)]


@functools.lru_cache(maxsize=8)
def _fitted_mesh(folder: str, fit_json: str) -> tuple[trimesh.Trimesh, dict]:
    # One fit per (folder, parameters): every instance of the class is this mesh. Reached through the stage
    # registry (as the CLI reaches jobs), not imported: the fit draws with the render stage's rasteriser, and
    # render reads meshes through meshgen.api, which imports this module (a static import would close that loop).
    from services.common.stages import get_stage

    return get_stage("meshgen").job().fit_folder(folder, fit_json)


@register_family
class FittedFamily(ShapeFamily):
    """A lab's own objects: class ``c`` is an ico-sphere fitted to the masks + render records in ``folders[c]``
    (:mod:`services.meshgen.fit`), rendered like procsynth. One natural instance per class; more instances are
    the same mesh (the render stage varies pose and illumination)."""

    name = "fitted"
    params_type = FittedParams

    def default_instances(self, params: FittedParams) -> int:
        return 1

    def generate_class(self, params, root_seed, class_index, instances: Sequence[int]) -> list[GeneratedItem]:
        params = self.parse_params(params)
        if not 0 <= class_index < len(params.folders):
            raise ValueError(f"family.folders: class {class_index} has no silhouette folder "
                             f"({len(params.folders)} folders listed)")
        mesh, stats = _fitted_mesh(params.folders[class_index], params.fit.model_dump_json())
        data = export_glb(mesh)
        seed = derive_seed(root_seed, self.name, class_index)
        return [GeneratedItem(class_index, instance, seed, f"{class_dir(class_index)}/{instance}.glb", data,
                              dict(stats), mesh) for instance in instances]
