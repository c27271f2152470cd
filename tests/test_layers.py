"""The code's shape, read from its own imports (function-local ones included, `if TYPE_CHECKING:` ones not): one-way
layers between the packages and inside `provisioner/`, no import circle, a store that reaches no host, small files and
folders, and a built package that holds every sub-package."""

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest
import tomllib

from tests.helpers import ROOT

PACKAGES = ("cli", "configuration", "offers", "provisioner", "stacks")
# Each package imports only itself and those it names (cli may import every other).
PACKAGE_LAYERS = {"configuration": set(), "offers": {"configuration"}, "stacks": {"configuration"},
                  "provisioner": {"configuration", "offers", "stacks"}, "cli": set(PACKAGES)}
# provisioner's sub-packages, highest first: each imports only itself and those after it.
PROVISIONER_LAYERS = ("runs", "backends", "planning", "jobs", "store", "host")
MAX_FILE_LINES = 600
MAX_MODULES_PER_FOLDER = 20


def module_files() -> Dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> Set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skipped.update(id(inner) for statement in node.body for inner in ast.walk(statement))
    return skipped


def imported_names(module: str, path: Path) -> Set[str]:
    """Every dotted name `module` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) - node.level + (path.name == "__init__.py")]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> Dict[str, Set[str]]:
    """Project module -> the project modules it imports."""
    files = module_files()
    graph = {}
    for module, path in files.items():
        edges = set()
        for name in imported_names(module, path):
            parts = name.split(".")
            while parts and ".".join(parts) not in files:
                parts.pop()
            target = ".".join(parts)
            if target and target != module and not module.startswith(target + "."):
                edges.add(target)
        graph[module] = edges
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle_through_a_function_local_import(tmp_path):
    """The check above can fail: a circle hidden in a function is found."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    path = tmp_path / "m.py"
    path.write_text("import os\n\ndef f():\n    from provisioner.store import store\n\n"
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from provisioner.runs import session\n")
    assert {"provisioner.store", "provisioner.store.store"} <= imported_names("provisioner.x", path)
    assert not any(name.startswith("provisioner.runs") for name in imported_names("provisioner.x", path))


def test_packages_import_one_way(graph):
    wrong = [f"{module} -> {target}" for module, targets in graph.items() for target in targets
             if target.split(".")[0] != module.split(".")[0]
             and target.split(".")[0] not in PACKAGE_LAYERS[module.split(".")[0]]]
    assert wrong == []


def _provisioner_layer(module: str) -> int:
    parts = module.split(".")
    return PROVISIONER_LAYERS.index(parts[1]) if len(parts) > 2 else -1


def test_provisioner_layers_import_only_those_below(graph):
    modules = [m for m in graph if m.startswith("provisioner.") and m.count(".") >= 2]
    assert {m.split(".")[1] for m in modules} == set(PROVISIONER_LAYERS)  # no module outside a layer
    assert [m for m in graph if m.startswith("provisioner.") and m.count(".") == 1
            and m.split(".")[1] not in PROVISIONER_LAYERS] == []
    wrong = [f"{module} -> {target}" for module in modules for target in graph[module]
             if target.startswith("provisioner.") and _provisioner_layer(target) < _provisioner_layer(module)]
    assert wrong == []


def test_the_store_reaches_no_host(graph):
    """The state store never calls up: nothing it imports, however indirectly, reaches a host (SSH, jobs)."""
    files = module_files()
    reached, todo = set(), [m for m in graph if m.startswith("provisioner.store")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    provisioner_reached = {m for m in reached if m.startswith("provisioner.")}
    assert all(m.startswith("provisioner.store") for m in provisioner_reached), provisioner_reached
    third_party = {name.split(".")[0] for module in reached for name in imported_names(module, files[module])}
    assert not third_party & {"paramiko", "pulumi", "boto3"}


def test_commands_never_import_each_other(graph):
    """What two commands share lives in cli.helpers (or cli.output, cli.run_session...), not in either command."""
    commands = {m for m in graph if m.startswith("cli.commands.")}
    assert "cli.commands.apply" in commands
    wrong = [f"{module} -> {target}" for module in graph if module.startswith("cli.")
             for target in graph[module] & commands]
    assert wrong == []


def test_files_and_folders_stay_small():
    files = module_files()
    long = {module: n for module, path in files.items() if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}
    folders: Dict[Path, int] = {}
    for path in files.values():
        folders[path.parent] = folders.get(path.parent, 0) + (path.name != "__init__.py")
    assert {str(f): n for f, n in folders.items() if n > MAX_MODULES_PER_FOLDER} == {}


def test_every_folder_of_code_is_a_package():
    """A folder without __init__.py would be left out of the built package."""
    for package in PACKAGES:
        for folder in (ROOT / package).rglob("*"):
            if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
                assert (folder / "__init__.py").exists(), folder


def test_the_package_finds_every_sub_package():
    """pyproject.toml has setuptools find packages rather than list them: an installed `dstack` holds every folder
    of code (a new sub-package needs no edit there)."""
    import setuptools

    found = setuptools.find_packages(str(ROOT), **tomllib.loads((ROOT / "pyproject.toml").read_text())
                                     ["tool"]["setuptools"]["packages"]["find"])
    folders = {".".join(path.parent.relative_to(ROOT).parts) for package in PACKAGES
               for path in (ROOT / package).rglob("__init__.py")}
    assert folders - set(found) == set()
    assert {"provisioner.store", "stacks.aws", "cli.commands"} <= set(found)
    assert not any(name.startswith("tests") for name in found)
