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


def _empty_packages(root: Path) -> None:
    for package in PACKAGES:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")


def test_a_made_up_circle_is_reported(tmp_path):
    _empty_packages(tmp_path)
    (tmp_path / "shards" / "a.py").write_text("from shards.b import thing\n")
    (tmp_path / "shards" / "b.py").write_text("def f():\n    from shards import a\n")
    (tmp_path / "zxvad" / "c.py").write_text("import shards.a\n")
    assert cycles(import_graph(module_files(tmp_path))) == [["shards.a", "shards.b"]]


def test_no_import_cycles():
    found = cycles(import_graph(module_files()))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(group) for group in found)


# -- layer rules: what each layer may import ------------------------------------------------------

METHOD_CORE = ("zxvad.models", "zxvad.losses", "zxvad.synthesis", "zxvad.step", "zxvad.scoring", "zxvad.ddp")
RUNTIME_STACK = ("ray", "nvidia.dali", "mlflow")  # the method must test fast on a plain CPU without them
HEAVY = ("torch", "torchvision", "ray", "mlflow", "sklearn", "nvidia.dali", "boto3")  # seconds to import


def imported_names(path: Path, top_level_only: bool = False) -> set[str]:
    """Every module name a file imports (ours and third-party); ``top_level_only`` skips the
    imports inside functions and classes, which run only when called."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return out


def closure(start: str, graph: dict[str, set[str]]) -> set[str]:
    """``start`` and every module of ours it reaches through ``graph``."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += sorted(graph[name])
    return seen


def _top_level_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in modules.items():
        ours = {_target(n, modules) for n in imported_names(path, top_level_only=True)}
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        graph[name] = {t for t in ours | parents if t and t != name and t in modules}  # a package runs its __init__
    return graph


def _third_party(names: set[str], banned: tuple[str, ...]) -> set[str]:
    return {n for n in names if any(n == b or n.startswith(b + ".") for b in banned)}


def test_the_method_core_imports_no_ray_dali_or_mlflow():
    modules = module_files()
    graph = import_graph(modules)
    core = {m for m in modules if m.startswith(METHOD_CORE)}
    assert {"zxvad.step", "zxvad.losses", "zxvad.models.generator"} <= core
    found = {}
    for start in sorted(core):
        for name in closure(start, graph):
            bad = _third_party(imported_names(modules[name]), RUNTIME_STACK)
            if bad:
                found[f"{start} via {name}"] = sorted(bad)
    assert not found, f"the method core reaches the runtime stack: {found}"


def test_shards_imports_nothing_from_zxvad_or_tune():
    graph = import_graph(module_files())
    found = {m: sorted(t for t in targets if not t.startswith("shards"))
             for m, targets in graph.items() if m.startswith("shards")}
    assert not {m: t for m, t in found.items() if t}, f"shards imports upwards: {found}"


def test_nothing_in_zxvad_imports_tune():
    graph = import_graph(module_files())
    found = {m: sorted(t for t in targets if t.startswith("tune")) for m, targets in graph.items()
             if m.startswith("zxvad")}
    assert not {m: t for m, t in found.items() if t}, f"zxvad imports tune: {found}"


# zxvad.serving: the scoring model is an MLflow pyfunc; zxvad.bench.lab: the lab (no Ray Train, no
# training run) writes its finished results as runs of their own, for tune.compare to read
MLFLOW_HOME = ("zxvad.tracking", "zxvad.serving", "zxvad.bench.lab")


def mlflow_outside_its_home(modules: dict[str, Path]) -> dict[str, list[str]]:
    """The modules outside :data:`MLFLOW_HOME` that import MLflow (anywhere in the file)."""
    found = {name: sorted(_third_party(imported_names(path), ("mlflow",))) for name, path in modules.items()
             if not any(name == home or name.startswith(home + ".") for home in MLFLOW_HOME)}
    return {name: bad for name, bad in found.items() if bad}


def test_only_tracking_serving_and_the_lab_import_mlflow():
    """Everything else (the run's driver and workers, evaluation, tune) goes through
    ``zxvad.tracking``, so what a run logs and reads back has one home."""
    modules = module_files()
    assert {"zxvad.tracking.runs", "zxvad.tracking.read", "zxvad.redaction"} <= set(modules)
    found = mlflow_outside_its_home(modules)
    assert not found, f"MLflow imported outside {MLFLOW_HOME}: {found}"


def test_mlflow_outside_its_home_is_reported(tmp_path):
    _empty_packages(tmp_path)
    (tmp_path / "zxvad" / "tracking").mkdir()
    (tmp_path / "zxvad" / "tracking" / "__init__.py").write_text("")
    (tmp_path / "zxvad" / "tracking" / "runs.py").write_text("def f():\n    import mlflow\n")
    (tmp_path / "zxvad" / "tracker.py").write_text("from mlflow.entities import Metric\n")
    (tmp_path / "tune" / "compare.py").write_text("def g():\n    import mlflow.artifacts\n")
    assert mlflow_outside_its_home(module_files(tmp_path)) == {
        "zxvad.tracker": ["mlflow.entities", "mlflow.entities.Metric"], "tune.compare": ["mlflow.artifacts"]}


def test_the_driver_plan_loads_nothing_heavy_before_the_inputs_are_checked():
    """`python -m zxvad.train` reports a bad input before torch, Ray or MLflow load (seconds each
    on 2 cores): the command and its plan, with all they import at module level, import none."""
    modules = module_files()
    graph = _top_level_graph(modules)
    for start in ("zxvad.train", "zxvad.run.plan"):
        heavy = {name: sorted(_third_party(imported_names(modules[name], top_level_only=True), HEAVY))
                 for name in closure(start, graph)}
        assert not {k: v for k, v in heavy.items() if v}, f"{start} loads at import: {heavy}"


def test_a_layer_breach_is_reported(tmp_path):
    _empty_packages(tmp_path)
    (tmp_path / "zxvad" / "losses.py").write_text("def f():\n    import mlflow\n")
    (tmp_path / "zxvad" / "step.py").write_text("from zxvad import losses\n")
    modules = module_files(tmp_path)
    reached = closure("zxvad.step", import_graph(modules))
    assert reached == {"zxvad.step", "zxvad.losses"}
    assert _third_party(imported_names(modules["zxvad.losses"]), RUNTIME_STACK) == {"mlflow"}
    assert _third_party(imported_names(modules["zxvad.losses"], top_level_only=True), RUNTIME_STACK) == set()
