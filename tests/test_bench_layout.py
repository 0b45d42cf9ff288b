"""``bench/``'s folders, read from the source: each folder imports only ``bench`` folders below it in
:data:`ORDER` (``harness`` imports none), by their package names (``bench.steps.step_cases``, never a
bare ``step_cases`` found through a ``sys.path`` entry), so every script runs from any folder."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "bench")
ORDER = ("harness", "steps", "attention", "data", "suite")  # bottom to top


def _modules():
    for folder in ORDER:
        for name in sorted(os.listdir(os.path.join(BENCH, folder))):
            if name.endswith(".py"):
                yield folder, name[:-3], os.path.join(BENCH, folder, name)


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):  # module level and inside functions alike
        if isinstance(node, ast.Import):
            yield from ((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level


def test_the_folders_are_the_ones_listed():
    folders = {d for d in os.listdir(BENCH) if os.path.isfile(os.path.join(BENCH, d, "__init__.py"))}
    assert folders == set(ORDER)
    assert os.path.isfile(os.path.join(BENCH, "__init__.py"))


def test_each_folder_imports_only_the_folders_below_it_by_package_name():
    stems = {name for _, name, _ in _modules()} - {"__init__"}
    for folder, name, path in _modules():
        for module, level in _imports(path):
            if level:  # relative: its own folder
                continue
            parts = module.split(".")
            assert parts[0] not in stems, f"bench/{folder}/{name}.py imports {module!r} by a bare name"
            if parts[0] == "bench" and len(parts) > 1:
                assert ORDER.index(parts[1]) <= ORDER.index(folder), \
                    f"bench/{folder}/{name}.py imports {module} from a folder above its own"
