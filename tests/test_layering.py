"""The import layering of ``services/`` (docs/architecture.md), read from the source with ``ast``.

Layers, top to bottom: adapters (``cli``, ``cluster``) -> conductor (``experiment``,
``report``) -> stages (``meshgen``, ``render``, ``train``, ``neuro``) -> ``common``.
A package imports only its own layer's packages or lower ones; another stage, or any
package above the stages, is read only through the stage's public ``api`` module; and
no module imports itself back through a chain of others. Imports inside functions count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ROOT / "services"
STAGES = ("meshgen", "render", "train", "neuro")
LAYERS = {"cli": 3, "cluster": 3, "experiment": 2, "report": 2, **dict.fromkeys(STAGES, 1), "common": 0}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The ``services.*`` modules a file imports (``from pkg import name`` counts as ``pkg.name`` when that is a module)."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (ROOT / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                    ROOT / Path(*candidate.split(".")) / "__init__.py").exists()
                found.add(candidate if is_module else base)
    return {name for name in found if name == "services" or name.startswith("services.")}


def graph(root: Path = SERVICES) -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(root.rglob("*.py"))}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_violations(edges: dict[str, set[str]]) -> list[str]:
    problems = []
    for source, targets in edges.items():
        src_pkg = package_of(source)
        for target in sorted(targets):
            dst_pkg = package_of(target)
            if dst_pkg == src_pkg or dst_pkg not in LAYERS or src_pkg not in LAYERS:
                continue
            if LAYERS[dst_pkg] > LAYERS[src_pkg]:
                problems.append(f"{source} imports {target}: {src_pkg} may not import the layer above it")
            elif dst_pkg in STAGES and target not in (f"services.{dst_pkg}", f"services.{dst_pkg}.api"):
                problems.append(f"{source} imports {target}: other packages read {dst_pkg} only through "
                                f"services.{dst_pkg}.api")
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), as sorted lists."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_package_has_a_layer():
    packages = {p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists()} | {"cli"}
    assert packages <= set(LAYERS), f"give {sorted(packages - set(LAYERS))} a layer in this test and in docs/architecture.md"


def test_no_package_imports_a_layer_above_it_or_another_stage_internals():
    assert layering_violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_common_imports_no_stage():
    edges = graph()
    assert not {(s, t) for s, targets in edges.items() if package_of(s) == "common"
                for t in targets if package_of(t) != "common"}


@pytest.mark.parametrize("source, target, expected", [
    # the upward and sideways imports this layout replaced would all be caught
    ("services.common.progress", "services.render.shards", "layer above"),
    ("services.common.plan", "services.cluster.workplan", "layer above"),
    ("services.cluster.workplan", "services.render.plan", "only through"),
    ("services.render.shards", "services.meshgen.fractal2d", "only through"),
    ("services.report.build", "services.render.shards", "only through"),
    ("services.meshgen.contact_sheet", "services.render.renderer", "only through"),
])
def test_the_checks_catch_what_they_should(source, target, expected):
    assert expected in " ".join(layering_violations({source: {target}}))


def test_the_cycle_check_finds_a_circle():
    # render's contact sheet, shard writer and views used to import each other
    circle = {"services.render.contact": {"services.render.shards"},
              "services.render.shards": {"services.render.views"},
              "services.render.views": {"services.render.shards"}}
    assert cycles(circle) == [["services.render.shards", "services.render.views"]]


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    package = tmp_path / "services" / "demo"
    package.mkdir(parents=True)
    (tmp_path / "services" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from services.common import errors\n    from . import b\n")
    (package / "b.py").write_text("")
    (tmp_path / "services" / "common").mkdir()
    (tmp_path / "services" / "common" / "errors.py").write_text("")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert imports_of(package / "a.py") == {"services.common.errors", "services.demo.b"}
    finally:
        ROOT = saved
