"""No import circles in src/kailin: every ``import`` (top-level or inside a function) is an edge,
read with ``ast`` (nothing is imported), and the graph of kailin's modules must be acyclic. The
pipeline's bottom layer (stage protocol, keys, lock, executors, run engine) imports no stage."""

from __future__ import annotations

import ast
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
    bottom = ["kailin.pipeline.stage", "kailin.pipeline.keys", "kailin.pipeline.lock",
              "kailin.pipeline.run", "kailin.pipeline.executors.local",
              "kailin.pipeline.executors.ray"]
    seen, todo = set(), list(bottom)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    stages = sorted(m for m in seen if m.startswith(("kailin.pipeline.stages", "kailin.align",
                                                     "kailin.generate", "kailin.dataset")))
    assert not stages, f"the pipeline's bottom layer reaches {stages}"
