"""The package's layout rules (../shared/DESIGN.md), held by parsing its imports.

* `core/` imports only `core/` and the standard library: the pure core has no
  I/O of ours, no third-party code, nothing of the edges; so does
  `delivery/health.py`, the API's health, pure like the core;
* imports point one way: nothing imports `cli/`, and `core/`, `storage/` and
  `system/` import nothing of the loop (`service`, `runner`, `pipeline`, `delivery/`);
* inside `delivery/` each module imports only what its job needs: the HTTP
  client nothing of the package, the API client no thread, health no I/O,
  settling no network, and nothing there imports the service or the pipeline;
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


# Modules as pure as core/: core/ and the standard library only.
PURE = ("core", "delivery.health")


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def core_violations(root: Path = PACKAGE_DIR) -> List[str]:
    known = modules(root)
    package = root.name
    problems = []
    for name, path in known.items():
        if not any(_within(name, f"{package}.{pure}") for pure in PURE):
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
    loop = (f"{package}.service", f"{package}.runner", f"{package}.pipeline", f"{package}.delivery")
    lower = (f"{package}.core", f"{package}.storage", f"{package}.system")
    problems = []
    for source, targets in edges.items():
        for target in targets:
            in_cli = _within(target, f"{package}.cli")
            if in_cli and not (source.startswith(f"{package}.cli") or source == f"{package}.__main__"):
                problems.append(f"{source} imports {target}: nothing outside cli/ imports cli/")
            if source.startswith(lower) and any(_within(target, part) for part in loop):
                problems.append(f"{source} imports {target}: the lower layers do not import the loop")
    return problems


# What each module of delivery/ may import of the package (prefixes; a package's
# __init__ comes with any of its modules).
DELIVERY_MAY_IMPORT = {
    "delivery": ("delivery.thread",),
    "delivery.http": (),
    "delivery.health": ("core",),
    "delivery.learn_api": ("core", "storage", "delivery.http"),
    "delivery.settle": ("core", "storage", "logs", "delivery.health"),
    "delivery.relearn": (
        "config",
        "core",
        "storage",
        "delivery.doubts",
        "delivery.health",
        "delivery.http",
        "delivery.learn_api",
    ),
    "delivery.doubts": ("core", "storage", "delivery.learn_api"),
    "delivery.run": ("core", "storage", "delivery.health", "delivery.learn_api", "delivery.relearn", "delivery.settle"),
    "delivery.watch": (),
    "delivery.thread": ("config", "core", "storage", "delivery"),
}


def delivery_violations(edges: Dict[str, Set[str]], package: str = PACKAGE) -> List[str]:
    problems = []
    for module, allowed in DELIVERY_MAY_IMPORT.items():
        source = f"{package}.{module}"
        for target in sorted(edges.get(source, ())):
            if target == package or any(_within(target, f"{package}.{prefix}") for prefix in allowed):
                continue
            problems.append(f"{source} imports {target}")
    return problems


# -- the rules on the real package -------------------------------------------------


def test_core_imports_only_core_and_the_standard_library():
    assert core_violations() == []


def test_no_import_circle_in_the_package():
    assert find_cycle(graph()) == []


def test_imports_point_one_way():
    assert direction_violations(graph()) == []


def test_each_delivery_module_imports_only_what_its_job_needs():
    names = set(modules())
    assert {f"{PACKAGE}.{module}" for module in DELIVERY_MAY_IMPORT} <= names
    assert delivery_violations(graph()) == []


def test_the_layout_has_its_layers():
    names = set(modules())
    for expected in (
        "core.sessions",
        "core.mapping",
        "core.outcome",
        "database_identity",
        "rewrite_ledger",
        "runner",
        "storage.state",
        "storage.lock",
        "delivery.thread",
        "delivery.learn_api",
        "delivery.health",
        "delivery.settle",
        "delivery.http",
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


def test_health_importing_storage_or_a_third_party_library_is_caught(package_copy):
    health = package_copy / "delivery" / "health.py"
    health.write_text(health.read_text() + "\nfrom ..storage.state import StateStore  # noqa\nimport httpx  # noqa\n")
    assert core_violations(package_copy) == [
        f"{PACKAGE}.delivery.health imports {PACKAGE}.storage.state",
        f"{PACKAGE}.delivery.health imports httpx",
    ]


def test_a_delivery_module_reaching_past_its_job_is_caught(package_copy):
    learn_api = package_copy / "delivery" / "learn_api.py"
    learn_api.write_text(learn_api.read_text() + "\n\ndef later():\n    from .thread import Deliverer  # noqa\n")
    http = package_copy / "delivery" / "http.py"
    http.write_text(http.read_text() + "\nfrom ..core.fates import Verdict  # noqa\n")
    assert delivery_violations(graph(package_copy)) == [
        f"{PACKAGE}.delivery.http imports {PACKAGE}.core",
        f"{PACKAGE}.delivery.http imports {PACKAGE}.core.fates",
        f"{PACKAGE}.delivery.learn_api imports {PACKAGE}.delivery.thread",
    ]


def test_storage_importing_a_delivery_module_is_caught(package_copy):
    state = package_copy / "storage" / "state.py"
    state.write_text(state.read_text() + "\n\ndef later():\n    from ..delivery.learn_api import learn_body  # noqa\n")
    problems = direction_violations(graph(package_copy))
    assert any("storage.state imports" in problem and "delivery.learn_api" in problem for problem in problems)
