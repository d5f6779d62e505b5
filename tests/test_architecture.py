"""The package's layering, checked on the source: every edgeq import points down the pipeline.

Imports inside functions count as much as those at the top of a file: a lazy import still ties two
modules together. ``docs/ARCHITECTURE.md`` draws the same layers.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "edgeq"

#: Lowest first. A module may import its own unit and any unit of a lower layer, nothing above.
LAYERS: list[set[str]] = [
    {"errors"},
    {"fileio"},  # checked, atomic writes of every file edgeq writes
    {"graph"},  # load, normalize, view, cut, onnxruntime sessions over the float graph
    {"meta"},  # EdgeFirst schema v2: typed metadata, embedding, reading
    {"calib"},  # images, histograms, range methods
    {"decode"},  # target- and family-neutral decode primitives: fields, NMS, masks, flat heads
    {"families"},  # one module per head family
    {"prepare"},  # the graph stage: load, discover the family's head, cut, equalize
    {"quant"},  # the target-neutral QuantPlan and the techniques that shape it
    {"export"},  # one package per target: constraints, emitter, runtime backend, embedding
    {"runtime"},  # load any artifact, predict
    {"config"},  # validated conversion settings (names the registries)
    {"eval"},  # task metrics, comparison, bootstrap, resolution floor
    {"analysis", "perf"},  # where the INT8 loss comes from; latency and per-op profiles
    {"pipeline"},
    {"api", "inspect"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """edgeq modules imported anywhere in ``path`` (resolved to the deepest known module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("edgeq.") and name != module:
                found.add(name)
    return found


def _unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_unit_has_a_layer(graph):
    units = {_unit(m) for m in graph} - {"__init__"}
    assert units <= set(RANK), f"add these to LAYERS (and docs/ARCHITECTURE.md): {sorted(units - set(RANK))}"


def test_imports_point_down_the_layers(graph):
    upward = []
    for module, deps in graph.items():
        if module == "edgeq":
            continue
        for dep in deps:
            a, b = _unit(module), _unit(dep)
            if b == "__init__" or a == b:
                continue
            if RANK[b] >= RANK[a]:
                upward.append(f"{module} -> {dep}  ({a} is layer {RANK[a]}, {b} is layer {RANK[b]})")
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_quant_imports_no_target_and_no_evaluation(graph):
    bad = [f"{m} -> {d}" for m, deps in graph.items() if _unit(m) == "quant"
           for d in deps if _unit(d) in {"export", "eval", "analysis", "runtime", "pipeline"}]
    assert not bad, bad


def test_no_import_cycle_between_files(graph):
    # a package's __init__ re-exporting its own modules is not a cycle between files
    edges = defaultdict(set)
    for m, deps in graph.items():
        for d in deps:
            if not (m != "edgeq" and d.startswith(m + ".")) and m != "edgeq":
                edges[m].add(d)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_check_sees_an_upward_import(tmp_path):
    """The resolver finds relative, aliased and function-level imports (so the checks can fail)."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from edgeq.eval import coco\n    from ..pipeline import convert\n")
    found = _imports("edgeq.quant.m", src, {"edgeq.eval", "edgeq.eval.coco", "edgeq.pipeline"})
    assert found == {"edgeq.eval", "edgeq.eval.coco", "edgeq.pipeline"}
