"""The import graph of zxvad, shards and tune runs one way: no module reaches itself again.

Imports inside functions count: a lazy import still ties the two modules together.
"""

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("zxvad", "shards", "tune")


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest module of ours that ``name`` names (``a.b.func`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, anywhere in its file."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + [base]).strip(".")
                # `from pkg import mod` imports the module pkg.mod; `from mod import func` imports mod
                names = [f"{base}.{alias.name}" for alias in node.names]
            for imported in names:
                target = _target(imported, modules)
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph(module_files())
    assert "shards.s3" in graph["zxvad.data.shardset"]  # imported inside _s3_client only
    assert "zxvad.config" in graph["tune.space"]
    assert "zxvad.data.pipelines" in graph["zxvad.data"]  # inside the package's __getattr__


def test_a_made_up_circle_is_reported(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "shards" / "a.py").write_text("from shards.b import thing\n")
    (tmp_path / "shards" / "b.py").write_text("def f():\n    from shards import a\n")
    (tmp_path / "zxvad" / "c.py").write_text("import shards.a\n")
    assert cycles(import_graph(module_files(tmp_path))) == [["shards.a", "shards.b"]]


def test_no_import_cycles():
    found = cycles(import_graph(module_files()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)
