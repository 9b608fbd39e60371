"""The package's rooms: imports run one way, with no cycle, counting imports inside functions."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("flexgen_core", "flexgen_eval")
# flexgen_core's rooms, lowest first: a module imports only modules of its own room or of rooms
# below it. The package root holds the public API (__init__), the profiler (above every room: it
# measures the machine by running the model) and units.py (a leaf any room may import).
ROOMS = ("model", "memory", "planning", "runtime")
ROOT_LEAVES = ("flexgen_core.units",)


def _modules() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, REPO)[:-3].split(os.sep)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    found[".".join(parts)] = path
    return found


def _imports(module: str, path: str, known: set) -> set:
    """Project modules that `module` imports anywhere in its file."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_no_import_cycles(graph):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if n.startswith(m + "."):
                continue  # a package's __init__ gathering its own modules is not a cycle
            if state.get(n) == "open":
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else None


def test_core_rooms_import_only_rooms_below_them(graph):
    wrong = []
    for m, targets in graph.items():
        if not m.startswith("flexgen_core.") or _room(m) not in ROOMS:
            continue
        mine = ROOMS.index(_room(m))
        for t in targets:
            if t in ROOT_LEAVES or not t.startswith("flexgen_core"):
                continue
            room = _room(t)
            if room not in ROOMS or ROOMS.index(room) > mine:
                wrong.append(f"{m} -> {t}")
    assert not wrong, "imports against the rooms' order: " + ", ".join(sorted(wrong))


def test_every_core_module_lives_in_a_room(graph):
    loose = [m for m in graph if m.startswith("flexgen_core.") and _room(m) is None
             and m not in ROOT_LEAVES and m != "flexgen_core.profiler"]
    assert not loose, f"modules outside the rooms: {sorted(loose)}"


def test_the_core_imports_no_adapter_harness_or_evaluation_framework():
    for m, path in _modules().items():
        if not m.startswith("flexgen_core"):
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                assert not name.startswith(("flexgen_eval", "helm", "lm_eval")), f"{m} imports {name}"
