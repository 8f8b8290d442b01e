"""The layers of the code base, read from the source (ast, nothing is imported): the engine
(``benchmark/``) never imports a plugin package (``tasks/``, ``pretrainers/``) nor names one of the
parts they register, and the modules of the three packages import one another without cycles."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGINE = "benchmark"
PLUGIN_PACKAGES = ("tasks", "pretrainers")
# cycles that exist today, each with the slice that removes it; a new cycle fails the test
KNOWN_CYCLES: list[set[str]] = []


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the engine and the plugin packages."""
    modules = {}
    for package in (ENGINE, *PLUGIN_PACKAGES):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(module: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``module`` imports, at the top or inside functions (what runs only under
    ``TYPE_CHECKING`` is left out): ``from pkg import name`` counts as importing ``pkg.name`` when
    that is a module, else ``pkg``; importing ``a.b.c`` does not count its parent packages."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    skipped = {id(n) for node in ast.walk(tree) if _type_checking_only(node) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # the package a relative import starts from: the module's own package, then up
                base = module.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in known else target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imported_names(module, path, known) for module, path in files.items()}


def named_plugin_modules(path: Path) -> set[str]:
    """String constants that name a plugin module (``"tasks.voc07_svm"``, ``"pretrainers.x:Cls"``): an
    import by ``importlib`` is an import too."""
    pattern = re.compile(rf"^({'|'.join(PLUGIN_PACKAGES)})(\.\w+)+(:\w+)?$")
    return {node.value for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.match(node.value)}


def test_the_engine_imports_no_plugin_package(graph) -> None:
    offending = sorted(f"{module} imports {target}" for module, targets in graph.items()
                       if module.split(".")[0] == ENGINE for target in targets
                       if target.split(".")[0] in PLUGIN_PACKAGES)
    offending += sorted(f"{module} names {name}" for module, path in module_files().items()
                        if module.split(".")[0] == ENGINE for name in named_plugin_modules(path))
    assert not offending, ("benchmark/ is the engine: tasks and pretrainers register through entry points "
                           "(pyproject.toml) and it must not import them:\n" + "\n".join(offending))


# The entry point groups through which the plugin packages register their parts (pyproject.toml).
PLUGIN_GROUPS = ("ssl_bench.tasks", "ssl_bench.pretrainers", "ssl_bench.pretext_methods", "ssl_bench.commands",
                 "ssl_bench.listings")
# Registered names that are also ordinary words the engine uses in another sense, each with where
# and why; a name listed here is not looked for at all, so the list stays this short.
GENERIC_WORDS = {
    "checkpoint": "benchmark/checkpoint.py's provenance key for the weights file it read",
}


def built_in_part_names() -> dict[str, str]:
    """Name -> entry point group of every part ssl-bench's own pyproject.toml registers."""
    entry_points = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    return {name: group for group in PLUGIN_GROUPS for name in entry_points.get(group, {})}


def named_parts(path: Path, names: dict[str, str]) -> list[tuple[int, str]]:
    """(line, name) of the string constants of ``path`` that equal a registered name: exact matches
    only, so that docstrings, messages and identifiers (``lowshot_voc07`` as a solver method) are
    not counted."""
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names]


def test_the_engine_names_no_built_in_part() -> None:
    names = built_in_part_names()
    # the names come from the file that declares them: an empty or mis-read table must fail, not pass
    assert {"detection_voc07", "normals_nyuv2", "voc07_svm", "knn"} <= set(names)
    assert {"rotation", "simclr", "moco", "relative_position", "pretext", "pretrain"} <= set(names)
    names = {name: group for name, group in names.items() if name not in GENERIC_WORDS}
    offending = [f"{path.relative_to(REPO)}:{line} '{name}' ({names[name]})"
                 for path in sorted((REPO / ENGINE).rglob("*.py")) for line, name in named_parts(path, names)]
    assert not offending, ("benchmark/ is the engine: what it needs of a task or pretext method comes from the "
                           "registered class (a hook or class attribute), never from its name:\n"
                           + "\n".join(offending))


def test_the_name_check_sees_a_named_part(tmp_path) -> None:
    """The check above is only as good as its matching: probe it on a file like the old report.py."""
    engine_file = tmp_path / "report.py"
    engine_file.write_text('"""Tables of detection_voc07."""\n'
                           'DETAIL = {"detection_voc07": "Detection (VOC07 test)"}\n'
                           'def f(x):\n    return x == "rotation" or x.lowshot_voc07\n')
    found = named_parts(engine_file, {"detection_voc07": "ssl_bench.tasks", "rotation": "ssl_bench.pretext_methods",
                                      "lowshot_voc07": "ssl_bench.tasks"})
    assert found == [(2, "detection_voc07"), (4, "rotation")]


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: the groups of modules that import one another in a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in graph:
                    continue  # outside the three packages
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1 or node in graph[node]:
                    groups.append(group)
    return groups


def test_no_import_cycles_beyond_the_known_ones(graph) -> None:
    cycles = strongly_connected(graph)
    new = [sorted(group) for group in cycles if group not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"
    # a known cycle that is gone must leave the list, so that it cannot come back unnoticed
    assert all(known in cycles for known in KNOWN_CYCLES), f"no longer cycles, remove them: {KNOWN_CYCLES}"


def test_the_graph_sees_relative_lazy_and_package_imports() -> None:
    """The checks above are only as good as the import resolution: probe it on known imports."""
    files = module_files()
    known = set(files)
    cli = imported_names("benchmark.cli", files["benchmark.cli"], known)
    assert {"benchmark.config", "benchmark.errors", "benchmark.run", "benchmark.report"} <= cli  # lazy ones too
    models = imported_names("benchmark.models", files["benchmark.models"], known)
    assert {"benchmark.models.backbone", "benchmark.models.alexnet", "benchmark.models.resnet"} <= models
    moco = imported_names("pretrainers.pretext.methods.moco", files["pretrainers.pretext.methods.moco"], known)
    assert {"pretrainers.pretext.method", "pretrainers.pretext.methods.simclr", "pretrainers.common"} <= moco
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_private_names_of_another() -> None:
    """A helper two modules need is public in a module of its own (e.g. datasets/synth_shapes.py for
    the VOC07 and Places205 generators), not a private name borrowed from one of them."""
    borrowed = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                borrowed += [f"{module}: from {'.' * node.level}{node.module or ''} import {alias.name}"
                             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not borrowed, "\n".join(borrowed)
