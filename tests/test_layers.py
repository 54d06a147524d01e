"""The layering the whole design rests on (docs/ARCHITECTURE.md): import arrows point down, no module imports one
that imports it back, and the device side runs with every host package made unimportable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import BLOCK_HOST_PACKAGES, ROOT

PACKAGES = ("edge_transfer", "converters", "runtimes")
LAYER = {"edge_transfer": 2, "converters": 1, "runtimes": 0}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (function-level ones too), except under `if TYPE_CHECKING:`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _runtime_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` imports the module
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in mods]
                targets = subs or [module]
            graph[name].update(t for t in targets if t in mods and t != name)
    return graph


def test_import_arrows_point_down_and_no_module_imports_itself_back():
    graph = import_graph()
    upward = [(a, b) for a, bs in graph.items() for b in bs if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert not upward, f"imports against the layering: {upward}"
    cycles = []
    for start in graph:  # a path from a module back to itself
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_no_module_is_over_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"split these modules (one job each): {long}"


def test_runtimes_and_every_backend_run_with_host_packages_unimportable(digits_bundle: Path, format_bundles):
    """torch, timm, onnx, accelerate, sklearn, edge_transfer and converters all blocked: load, self-test, predict."""
    code = (
        "import sys\n" + BLOCK_HOST_PACKAGES + "sys.modules['edge_transfer'] = None\nsys.modules['converters'] = None\n"
        "import numpy as np, runtimes\n"
        "for path in sys.argv[1:]:\n"
        "    with runtimes.load(path) as p:\n"
        "        p.self_test()\n"
        "        top = p.predict(np.zeros((40, 50, 3), np.uint8), top_k=1)[0][0]\n"
        "        print(p.manifest.backend, p.precision, top.label)\n"
        "print([m for m in ('torch', 'onnx', 'timm', 'edge_transfer', 'converters') if sys.modules.get(m) is not None])\n"
    )
    bundles = [digits_bundle, format_bundles["openvino"], format_bundles["onnx-int8"]]
    r = subprocess.run([sys.executable, "-c", code, *map(str, bundles)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["onnxruntime", "openvino", "onnxruntime"]
    assert lines[-1] == "[]"  # none of them was imported for real


# Inside runtimes, by concept: who may import each sub-package. The fleet (deploy, follow, the models folder) and the
# TensorRT engine builders sit above the bundle format and the core: nothing they rest on imports them back.
# "runtimes" is the front door (runtimes/__init__) alone; a name ending in "." covers that package and its modules.
IMPORTED_ONLY_BY = {
    "runtimes.fleet": ("runtimes", "runtimes.cli.", "runtimes.fleet."),
    "runtimes.engines": ("runtimes.backends.", "runtimes.cli.", "runtimes.engines.", "converters.", "edge_transfer."),
}


def test_each_runtimes_package_is_imported_only_from_above_it():
    def within(module: str, name: str) -> bool:
        return (module.startswith(name) or module == name[:-1]) if name.endswith(".") else module == name

    graph = import_graph()
    wrong = [
        (a, b)
        for a, bs in graph.items()
        for b in bs
        for package, allowed in IMPORTED_ONLY_BY.items()
        if within(b, package + ".") and not any(within(a, x) for x in allowed)
    ]
    assert not wrong, f"imports from below a package that sits above them: {wrong}"
    assert all(any(m.startswith(p + ".") for m in graph) for p in IMPORTED_ONLY_BY)  # the packages exist
