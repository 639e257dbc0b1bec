"""The layers of src/kailin (docs/architecture.md): every ``import`` (top-level or inside a
function) is an edge, read with ``ast`` (nothing is imported). Collapsed onto top-level packages
(``kailin.<package>``), imports only run down the layer table or sideways within a layer, and the
packages form no cycle; the modules form no cycle either."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in (SRC / "kailin").rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in mods:
                        deps.add(sub)
                    elif target in mods:
                        deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        colour[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if colour.get(w) == 1:
                return [*stack[stack.index(w):], w]
            if w not in colour and (c := visit(w)):
                return c
        stack.pop()
        colour[v] = 2
        return None

    for v in sorted(graph):
        if v not in colour and (c := visit(v)):
            return c
    return None


def test_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_in_kailin() -> None:
    graph = import_graph()
    assert "kailin.pipeline.stages" in graph and "kailin.retrieval.base" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_pipeline_bottom_layer_imports_no_stage() -> None:
    graph = import_graph()
    bottom = [m for m in graph if m.startswith("kailin.engine")]
    seen, todo = set(), list(bottom)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    stages = sorted(m for m in seen if m.startswith(("kailin.pipeline.stages", "kailin.align",
                                                     "kailin.generate", "kailin.dataset")))
    assert not stages, f"the pipeline's bottom layer reaches {stages}"


#: the layers, bottom first: a package may import its own layer's packages and the layers below
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("kailin", "kailin.errors", "kailin.io", "kailin.config", "kailin.progress")),
    ("engine", ("kailin.engine",)),
    ("domain", ("kailin.llm", "kailin.mesh", "kailin.corpus")),
    ("library", ("kailin.retrieval", "kailin.train", "kailin.generate", "kailin.align",
                 "kailin.evaluate", "kailin.dataset", "kailin.report")),
    ("stages", ("kailin.pipeline",)),
    ("cli", ("kailin.cli",)),
)


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def package_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, list[str]]]:
    """``{package: {imported package: [module -> module, ...]}}``"""
    out: dict[str, dict[str, list[str]]] = {}
    for m, deps in graph.items():
        a = package_of(m)
        out.setdefault(a, {})
        for d in deps:
            b = package_of(d)
            if a != b:
                out[a].setdefault(b, []).append(f"{m} -> {d}")
    return out


def upward_imports(pgraph: dict[str, dict[str, list[str]]]) -> list[str]:
    level = {p: i for i, (_, pkgs) in enumerate(LAYERS) for p in pkgs}
    bad = []
    for a, deps in pgraph.items():
        for b, edges in deps.items():
            if level[b] > level[a]:
                bad.append(f"{a} ({LAYERS[level[a]][0]}) imports {b} ({LAYERS[level[b]][0]}): "
                           + edges[0])
    return sorted(bad)


def test_every_package_has_a_layer() -> None:
    known = {p for _, pkgs in LAYERS for p in pkgs}
    pkgs = {package_of(m) for m in import_graph()}
    assert pkgs - known == set(), f"add {sorted(pkgs - known)} to LAYERS (and architecture.md)"


def test_layer_check_catches_an_upward_import() -> None:
    assert upward_imports({"kailin.mesh": {"kailin.retrieval": ["kailin.mesh.x -> "
                                                                 "kailin.retrieval.y"]},
                           "kailin.retrieval": {}})
    assert not upward_imports({"kailin.retrieval": {"kailin.mesh": ["a -> b"]},
                               "kailin.mesh": {}})


def test_imports_run_down_the_layers() -> None:
    bad = upward_imports(package_graph(import_graph()))
    assert not bad, "imports that run upwards:\n" + "\n".join(bad)


def test_packages_form_no_cycle() -> None:
    pgraph = package_graph(import_graph())
    cycle = find_cycle({a: set(d) for a, d in pgraph.items()})
    assert cycle is None, "package cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
        pgraph[a][b][0] for a, b in itertools.pairwise(cycle))


def test_file_sizes() -> None:
    """No module of src/kailin over 600 lines; no run-step module over 300 (one step, one
    place: its reads, its declaration, its run())."""
    big = {p.relative_to(SRC).as_posix(): n for p in (SRC / "kailin").rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not big, f"split these: {big}"
    steps = SRC / "kailin" / "pipeline" / "stages"
    long = {p.name: n for p in steps.glob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert not long, f"run-step modules over 300 lines: {long}"


def test_every_step_module_is_registered() -> None:
    """A step module in kailin/pipeline/stages is listed in the registry (a new step is its
    module and one line there)."""
    from kailin.pipeline.stages.registry import STEPS

    helpers = {"__init__", "common", "registry"}
    modules = {p.stem for p in (SRC / "kailin" / "pipeline" / "stages").glob("*.py")} - helpers
    assert modules == {m.__name__.rsplit(".", 1)[1] for m in STEPS}
    assert all(callable(getattr(m, "steps", None)) for m in STEPS)
