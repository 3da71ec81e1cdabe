"""Dockerfiles, checked statically (no Docker engine here): pinned bases, non-root, real COPY sources."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .k8s_checks import REPO

DOCKERFILES = REPO / "Dockerfiles"
EXPECTED = {
    "meshgen": "cpu", "render": "cpu", "render-gpu": "gpu", "train": "cpu", "train-gpu": "gpu", "neuro": "cpu",
}


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Build stages with their instructions (continuation lines joined, comments dropped)."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            logical.append(current.strip())
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{path.name}: {keyword} before FROM"
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def dockerignore_excludes(relpath: str) -> bool:
    """Docker's rule: the last matching .dockerignore pattern wins; a pattern also matches everything below a match."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(rf"{regex}(/.*)?", relpath):
            excluded = not negate
    return excluded


def torch_pins() -> dict[str, str]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(re.match(r"^(torch|torchvision)==(\S+)$", d).groups() for d in deps if re.match(r"^(torch|torchvision)==", d))


def apt_packages() -> set[str]:
    lines = (REPO / "apt-packages.txt").read_text().splitlines()
    return {line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()}


def test_one_dockerfile_per_image():
    assert {p.name.removesuffix(".Dockerfile") for p in DOCKERFILES.glob("*.Dockerfile")} == set(EXPECTED)


@pytest.mark.parametrize("image", sorted(EXPECTED))
def test_dockerfile(image):
    path = DOCKERFILES / f"{image}.Dockerfile"
    stages = parse_dockerfile(path)
    assert len(stages) >= 2, f"{image}: must be multi-stage (build, then a runtime without build tools)"
    names = {s.name for s in stages if s.name}
    for stage in stages:
        # Pinned: an explicit tag that is not "latest" (or a digest), never a bare name.
        assert re.fullmatch(r"[\w./-]+(:[\w.-]+|@sha256:[0-9a-f]{64})", stage.base), f"{image}: FROM {stage.base} is not pinned"
        assert not stage.base.endswith(":latest"), f"{image}: FROM {stage.base}"
    final = stages[-1]
    users = final.args("USER")
    assert users, f"{image}: the runtime stage must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) >= 1000, f"{image}: USER {users[-1]} must be a numeric non-root uid (runAsNonRoot needs it)"
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # Every COPY source exists in the repository and survives .dockerignore.
    for stage in stages:
        for rest in stage.args("COPY"):
            words = shlex.split(rest)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            if from_stage is not None:
                assert from_stage in names or ":" in from_stage, f"{image}: COPY --from={from_stage} names no stage"
                continue
            for source in paths[:-1]:
                assert (REPO / source).exists(), f"{image}: COPY source {source} does not exist"
                assert not dockerignore_excludes(source.strip("/")), f"{image}: COPY source {source} is excluded by .dockerignore"
    # The project is installed with the exact torch pins of pyproject.toml.
    text = path.read_text()
    for package, version in torch_pins().items():
        assert f"{package}=={version}" in text, f"{image}: must install {package}=={version} (pyproject pin)"
    assert re.search(r"pip install \.", text), f"{image}: must pip install the project"
    # Only packages from apt-packages.txt, and only in images that need them.
    installed = set()
    for rest in final.args("RUN"):
        match = re.search(r"apt-get install\s+(.*?)(&&|$)", rest)
        if match:
            installed |= {w for w in match.group(1).split() if not w.startswith("-")}
    assert installed <= apt_packages(), f"{image}: {installed - apt_packages()} not in apt-packages.txt"
    service = image.removesuffix("-gpu")
    cmd = final.args("CMD")[-1]
    assert final.args("ENTRYPOINT")[-1] == '["flatland"]' and f'"serve", "{service}"' in cmd
    envs = " ".join(final.args("ENV"))
    assert "HOME=/tmp" in envs  # the root filesystem is read-only in the cluster
    if service == "render":
        if EXPECTED[image] == "gpu":
            assert "libegl1" in installed and "PYOPENGL_PLATFORM=egl" in envs
            assert re.search(r"NVIDIA_DRIVER_CAPABILITIES=\S*graphics", envs)
        else:
            assert "libosmesa6" in installed and "PYOPENGL_PLATFORM=osmesa" in envs
    else:
        assert not installed & {"libosmesa6", "libegl1"}, f"{image}: no OpenGL needed"
    assert final.base.startswith("python:3.11")
    # One CUDA: the GPU images take it from the torch wheels (cu130), never from a CUDA base image too.
    assert not any(stage.base.startswith("nvidia/cuda") for stage in stages), f"{image}: a CUDA base beside the wheels' CUDA"
    if EXPECTED[image] == "gpu":
        assert f"download.pytorch.org/whl/cu{CUDA.replace('.', '')} " in text
        assert f"NVIDIA_REQUIRE_CUDA=cuda>={CUDA}" in envs  # the toolkit refuses an older driver
    else:
        assert "download.pytorch.org/whl/cpu" in text


CUDA = "13.0"  # of torch 2.14.1's CUDA wheels; Dockerfiles/README.md states it with the minimum driver
MIN_DRIVER = "580.65.06"  # CUDA 13.0's minimum Linux driver


def test_readme_states_the_cuda_and_driver_of_the_gpu_images():
    readme = (DOCKERFILES / "README.md").read_text()
    assert f"CUDA {CUDA}" in readme and f"cu{CUDA.replace('.', '')}" in readme
    assert re.search(rf"[Mm]inimum driver: NVIDIA {re.escape(MIN_DRIVER)}", readme)
    assert "nvidia/cuda" not in readme
    torch = pytest.importorskip("torch")
    if torch.version.cuda:  # this machine's torch is a CUDA build of the same pin: the same CUDA
        assert torch.version.cuda == CUDA, f"torch {torch.__version__} is built for CUDA {torch.version.cuda}, not {CUDA}"


def _version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _make_variable(name: str) -> str:
    match = re.search(rf"^{name} \?= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, f"Makefile: no {name} ?= ..."
    return match.group(1).strip()


def test_image_names_agree_across_makefile_manifests_and_docs():
    """One scheme, <registry>/<Dockerfile name>:<version>, in make images, the manifests and the docs."""
    from services.cluster.manifests import image_for
    from services.common.spec.experiment import ClusterSpec, parse_spec

    from .k8s_checks import kustomize, pod_specs

    registry, version = _make_variable("REGISTRY"), _version()
    makefile = (REPO / "Makefile").read_text()
    assert "docker build -f Dockerfiles/$$n.Dockerfile -t $(REGISTRY)/$$n:$(VERSION)" in makefile
    assert "wildcard Dockerfiles/*.Dockerfile" in makefile  # every Dockerfile is an image, by its name
    # The spec's defaults are what make images builds.
    cluster = ClusterSpec()
    assert (cluster.image_registry, cluster.image_tag) == (registry, version)
    spec = parse_spec({"name": "x", "cluster": {"gpu": True}})
    for stage in ("meshgen", "render", "train", "neuro"):
        for gpu in (False, True) if stage in ("render", "train") else (False,):
            image = image_for(spec, stage, gpu=gpu)
            name = image.removeprefix(registry + "/").removesuffix(":" + version)
            assert image == f"{registry}/{name}:{version}" and name in EXPECTED, image
    # Every flatland image the kustomize overlays pull.
    for target in ("overlays/dev", "overlays/gpu"):
        for obj in kustomize(target):
            for pod in pod_specs(obj):
                for c in pod["containers"]:
                    if "beyond-flatland" in c["image"]:
                        name = c["image"].removeprefix(registry + "/").removesuffix(":" + version)
                        assert c["image"] == f"{registry}/{name}:{version}" and name in EXPECTED, (target, c["image"])
    # Every image name written in the docs and Dockerfiles.
    docs = [REPO / "README.md", REPO / "k8s" / "README.md", DOCKERFILES / "README.md", *DOCKERFILES.glob("*.Dockerfile")]
    for path in docs:
        for match in re.finditer(r"([\w.-]+/)?beyond-flatland/([a-z0-9<>-]+):([\w.<>-]+)", path.read_text()):
            where = f"{path.relative_to(REPO)}: {match.group(0)}"
            assert match.group(1) == registry.split("/")[0] + "/", where
            assert match.group(2) in EXPECTED or match.group(2) == "<name>", where
            assert match.group(3) in (version, "<version>"), where
    for image in EXPECTED:
        assert f"Built by `make images` as {registry}/{image}:<version>" in (DOCKERFILES / f"{image}.Dockerfile").read_text()


def test_dockerignore_keeps_sources_and_drops_the_rest():
    assert not dockerignore_excludes("services/common/store.py")
    assert not dockerignore_excludes("flatland/v1/common_pb2.py")
    assert not dockerignore_excludes("pyproject.toml")
    for junk in (".venv/bin/python", ".git/HEAD", "services/common/__pycache__/store.cpython-311.pyc",
                 "flatland-data/meshes/x.glb", "tests/cluster/test_dockerfiles.py"):
        assert dockerignore_excludes(junk), junk
