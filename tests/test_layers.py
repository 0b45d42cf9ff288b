"""The package's layering, read from the source: imports flow one way, down the rooms of DESIGN §1.

Every ``import`` of a ``fastprompt`` module is collected from the AST of every file under
``fastprompt/`` (module level and inside functions alike: a lazy import still runs upward). A
room is a top-level module or package of ``fastprompt``; :data:`ROOMS` lists them bottom to top,
and a module may import only its own room or rooms below it. Between modules, lazy imports
included, there is no cycle either (a package's ``__init__`` re-exporting its modules is not one).
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

import fastprompt

PACKAGE = os.path.dirname(os.path.abspath(fastprompt.__file__))

# Bottom to top. The foundation first (standard library and torch only, or each other), then the
# core (ops -> towers -> learners), the data, and the run layer (DESIGN §7). The test helpers sit
# on top: the library never builds anything from them.
ROOMS = ("version", "lazy", "atomic_io", "errors", "folder_lock", "cli_args", "templates", "distributed", "keyed_file",
         "models", "kernels", "ops", "env", "towers", "learners", "reference", "data", "features", "replay", "train",
         "protocols", "pretrain", "demo", "cli", "testing", "__init__")


def _modules() -> Dict[str, str]:
    """dotted name -> file, for every module of the package (``fastprompt.kernels`` included)."""
    found = {}
    roots = [(PACKAGE, "fastprompt")]
    kernels = getattr(__import__("fastprompt.kernels").kernels, "__path__", None)
    if kernels:
        roots.append((list(kernels)[0], "fastprompt.kernels"))
    for root, dotted in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != "__pycache__" and d != "kernels"]
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), root)[:-3].replace(os.sep, ".")
                    module = dotted if rel == "__init__" else f"{dotted}.{rel}"
                    found[module.removesuffix(".__init__")] = os.path.join(folder, name)
    return found


def _imports(modules: Dict[str, str]) -> List[Tuple[str, str, bool, int]]:
    """``(importer, imported, at_import_time, line)`` for every import of a fastprompt module."""
    edges = []
    for module, path in modules.items():
        is_package = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    edges.append((module, target, id(node) in top_level, node.lineno))
    return edges


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_room_is_listed():
    rooms = {_room(m) for m in _modules()}
    assert rooms <= set(ROOMS), f"rooms missing from ROOMS (place each in the order): {sorted(rooms - set(ROOMS))}"


def test_imports_only_go_down():
    modules = _modules()
    rank = {room: i for i, room in enumerate(ROOMS)}
    upward = [f"{a} (line {line}) imports {b}" for a, b, _, line in _imports(modules)
              if b != "fastprompt" and rank[_room(b)] > rank[_room(a)]]
    assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules():
    modules = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in modules}
    for a, b, _, _ in _imports(modules):
        if b != "fastprompt" and not modules[b].endswith("__init__.py"):  # a package re-exports: not a cycle
            graph[a].add(b)
    state: Dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_folder_holds_more_than_25_modules():
    crowded = {}
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        count = sum(name.endswith(".py") for name in files)
        if count > 25:
            crowded[os.path.relpath(folder, PACKAGE)] = count
    assert not crowded, f"folders past 25 modules (give their jobs folders of their own): {crowded}"
