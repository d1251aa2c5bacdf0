"""The package's layout rules (../shared/DESIGN.md), held by parsing its imports.

* `core/` imports only `core/` and the standard library: the pure core has no
  I/O of ours, no third-party code, nothing of the edges;
* imports point one way: nothing imports `cli/`, and `core/`, `storage/` and
  `system/` import nothing of the loop (`service`, `runner`, `pipeline`, `delivery`);
* no import circle inside the package, counting imports inside functions
  (they are how the old `cli` <-> `backfill` circle hid).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "omnimemory_learner"
PACKAGE = PACKAGE_DIR.name


def module_name(path: Path, root: Path = PACKAGE_DIR) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE_DIR) -> Dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imports_of(path: Path, name: str, known: Set[str]) -> List[str]:
    """Every module a file imports, anywhere in it, as absolute names."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: List[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                # `from . import x` and `from .pkg import sub` name modules too.
                candidate = f"{base}.{alias.name}"
                found.append(candidate if candidate in known else base)
    return found


def graph(root: Path = PACKAGE_DIR) -> Dict[str, Set[str]]:
    known = modules(root)
    names = set(known)
    package = root.name
    edges: Dict[str, Set[str]] = {}
    for name, path in known.items():
        own_packages = _ancestors(name)
        targets = set()
        for target in imports_of(path, name, names):
            if not (target == package or target.startswith(package + ".")) or target == name:
                continue
            targets.add(target)
            # Importing a.b.c runs a/__init__ and a/b/__init__ first: a circle can
            # run through them (except through the packages the importer is in,
            # which are already being set up when it runs).
            targets.update(parent for parent in _ancestors(target) if parent in names and parent not in own_packages)
        edges[name] = targets - {name}
    return edges


def _ancestors(name: str) -> Set[str]:
    parts = name.split(".")
    return {".".join(parts[:index]) for index in range(1, len(parts))}


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import circle as a list of modules (first == last), or []."""
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        colour[node] = grey
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target not in colour:
                continue
            if colour[target] == grey:
                return stack[stack.index(target) :] + [target]
            if colour[target] == white:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        colour[node] = black
        return []

    for node in sorted(edges):
        if colour[node] == white:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def is_standard_library(top: str) -> bool:
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.10+
    if names is not None:
        return top in names
    # Python 3.9: where the module comes from (built in, or under the standard library's directory).
    import importlib.util
    import sysconfig

    if top in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(top)
    stdlib = sysconfig.get_paths()["stdlib"]
    origin = (spec.origin or "") if spec else ""
    return bool(origin) and origin.startswith(stdlib) and "site-packages" not in origin


def core_violations(root: Path = PACKAGE_DIR) -> List[str]:
    known = modules(root)
    package = root.name
    problems = []
    for name, path in known.items():
        if not name.startswith(f"{package}.core"):
            continue
        for target in imports_of(path, name, set(known)):
            top = target.split(".")[0]
            inside_core = target == f"{package}.core" or target.startswith(f"{package}.core.")
            if target == "__future__" or inside_core:
                continue
            if top == package or not is_standard_library(top):
                problems.append(f"{name} imports {target}")
    return problems


def direction_violations(edges: Dict[str, Set[str]], package: str = PACKAGE) -> List[str]:
    loop = {f"{package}.service", f"{package}.runner", f"{package}.pipeline", f"{package}.delivery"}
    lower = (f"{package}.core", f"{package}.storage", f"{package}.system")
    problems = []
    for source, targets in edges.items():
        for target in targets:
            in_cli = target == f"{package}.cli" or target.startswith(f"{package}.cli.")
            if in_cli and not (source.startswith(f"{package}.cli") or source == f"{package}.__main__"):
                problems.append(f"{source} imports {target}: nothing outside cli/ imports cli/")
            if source.startswith(lower) and target in loop:
                problems.append(f"{source} imports {target}: the lower layers do not import the loop")
    return problems


# -- the rules on the real package -------------------------------------------------


def test_core_imports_only_core_and_the_standard_library():
    assert core_violations() == []


def test_no_import_circle_in_the_package():
    assert find_cycle(graph()) == []


def test_imports_point_one_way():
    assert direction_violations(graph()) == []


def test_the_layout_has_its_layers():
    names = set(modules())
    for expected in (
        "core.sessions",
        "core.mapping",
        "core.outcome",
        "database_identity",
        "runner",
        "storage.state",
        "storage.lock",
        "system.notify",
        "cli.main",
        "cli.exits",
        "cli.output",
    ):
        assert f"{PACKAGE}.{expected}" in names


# -- the checks catch what they are meant to (on a copy of the package) ------------


@pytest.fixture
def package_copy(tmp_path):
    import shutil

    copy = tmp_path / PACKAGE
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_core_module_importing_storage_is_caught(package_copy):
    sessions = package_copy / "core" / "sessions.py"
    sessions.write_text(sessions.read_text() + "\nfrom ..storage.state import StateStore  # noqa\n")
    assert core_violations(package_copy) == [f"{PACKAGE}.core.sessions imports {PACKAGE}.storage.state"]


def test_a_core_module_importing_a_third_party_library_is_caught(package_copy):
    outcome = package_copy / "core" / "outcome.py"
    outcome.write_text(outcome.read_text() + "\n\ndef later():\n    import httpx  # noqa\n")
    assert core_violations(package_copy) == [f"{PACKAGE}.core.outcome imports httpx"]


def test_a_circle_through_a_function_level_import_is_caught(package_copy):
    exits = package_copy / "cli" / "exits.py"
    exits.write_text(exits.read_text() + "\n\ndef later():\n    from .main import main  # noqa\n")
    cycle = find_cycle(graph(package_copy))
    assert cycle and cycle[0] == cycle[-1]
    assert f"{PACKAGE}.cli.exits" in cycle and f"{PACKAGE}.cli.main" in cycle


def test_importing_cli_from_below_is_caught(package_copy):
    state = package_copy / "storage" / "state.py"
    state.write_text(state.read_text() + "\n\ndef later():\n    from ..cli.exits import EX_OK  # noqa\n")
    problems = direction_violations(graph(package_copy))
    assert any("storage.state imports" in problem and "cli.exits" in problem for problem in problems)


def test_a_circle_through_package_inits_is_caught(package_copy):
    # storage/__init__ importing system.notify runs system/__init__, which imports storage back.
    storage_init = package_copy / "storage" / "__init__.py"
    storage_init.write_text(
        storage_init.read_text() + "\nfrom ..system.notify import Notifier  # noqa\nPRIVATE = 0o700\n"
    )
    system_init = package_copy / "system" / "__init__.py"
    system_init.write_text(system_init.read_text() + "\nfrom ..storage import PRIVATE  # noqa\n")
    cycle = find_cycle(graph(package_copy))
    assert f"{PACKAGE}.storage" in cycle and f"{PACKAGE}.system" in cycle
