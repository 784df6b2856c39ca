"""Who may import whom: the runtime (appliance) never imports torch or the build side, build_tools
never imports benchmarks, there are no import loops (lazy imports included), the message types,
the client and the TUI load without the numeric stack, and no runtime file outgrows a page.
Every module is found by walking the packages, so a new module is checked without editing this file."""
from __future__ import annotations

import ast
import functools
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("appliance", "build_tools", "benchmarks")
BUILD_ONLY = ("torch", "transformers", "sentence_transformers", "huggingface_hub", "onnx", "matplotlib")
# what each package may import of the others: the runtime nothing, build_tools the runtime (windows,
# reader, manifests), benchmarks both
ALLOWED = {"appliance": set(), "build_tools": {"appliance"}, "benchmarks": {"appliance", "build_tools"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


@functools.cache
def imports(name: str, eager_only: bool = False) -> frozenset[str]:
    """Names a module imports (``import a.b``, ``from a import b`` and relative imports), resolved
    to the modules of this repository where they are ours; with ``eager_only`` only those run at
    import time (module level, not inside functions or classes' methods)."""
    path = MODULES.get(name)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = _module_level(tree) if eager_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return frozenset(found)


def _module_level(tree: ast.Module):
    """Statements executed on import: the module body, including if/try/with blocks, not function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
        elif isinstance(node, ast.ClassDef):
            stack.extend(n for n in node.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def ours(imported: str) -> str | None:
    """The repository module an import names (the longest module prefix), or None."""
    while imported and imported not in MODULES:
        imported = imported.rpartition(".")[0]
    return imported or None


def graph(eager_only: bool) -> dict[str, set[str]]:
    return {m: {t for i in imports(m, eager_only) if (t := ours(i)) and t != m} for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_every_runtime_module_imports_without_torch_or_the_build_side():
    """Import every module under appliance/ (found with pkgutil, speech/* included) in a fresh
    interpreter: none may pull in torch, transformers, build_tools or benchmarks."""
    forbidden = BUILD_ONLY + ("build_tools", "benchmarks")
    code = ("import importlib, pkgutil, sys, appliance\n"
            "names = ['appliance'] + [m.name for m in pkgutil.walk_packages(appliance.__path__, 'appliance.')\n"
            "                         if not m.name.endswith('.__main__')]\n"
            "failed = {}\n"
            "for name in names:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except BaseException as exc:\n"
            "        failed[name] = repr(exc)\n"
            f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
            "print(len(names), 'modules; failed:', failed, '; build-side modules loaded:', bad)\n"
            "sys.exit(1 if failed or bad else 0)\n")
    check = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    discovered = int(check.stdout.split()[0])
    assert discovered >= sum(1 for m in MODULES if m.startswith("appliance") and not m.endswith("__main__"))


def test_no_runtime_module_mentions_a_build_side_import():
    """Also the imports inside functions, which the import check above does not execute."""
    offenders = {m: sorted(i for i in imports(m) if i.split(".")[0] in BUILD_ONLY + ("build_tools", "benchmarks"))
                 for m in MODULES if m.split(".")[0] == "appliance"}
    assert not {m: i for m, i in offenders.items() if i}


def test_packages_import_only_downwards():
    """appliance <- build_tools <- benchmarks, counting imports inside functions too."""
    wrong = {}
    for module, targets in graph(eager_only=False).items():
        package = module.split(".")[0]
        for target in targets:
            if target.split(".")[0] not in ALLOWED[package] | {package}:
                wrong.setdefault(module, []).append(target)
    assert not wrong, f"imports against the layering appliance <- build_tools <- benchmarks: {wrong}"


def test_no_import_loops():
    """No loop anywhere, counting imports inside functions too (a lazy import that closes a loop
    still couples the two modules both ways)."""
    assert not cycles(graph(eager_only=True))
    assert not cycles(graph(eager_only=False))


def test_messages_client_and_tui_need_no_numeric_stack():
    """appliance.schema, the socket client and the TUI import without numpy, faiss or onnxruntime
    (the TUI loads the pipeline, through the runtime, only when no daemon answers)."""
    code = ("import sys, appliance.schema, appliance.client, appliance.tui\n"
            "print(sorted(m for m in ('numpy', 'faiss', 'onnxruntime', 'tokenizers') if m in sys.modules))\n")
    check = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "[]"


def test_no_runtime_file_is_over_400_lines():
    long = {m: n for m, p in MODULES.items() if m.split(".")[0] == "appliance"
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long


def test_the_cycle_finder_finds_a_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_wheel_is_the_runtime_only():
    """Only appliance is packaged; build_tools and benchmarks run from the checkout. The license is an
    SPDX expression (the table form makes pip print a deprecation warning on every setup)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["appliance*"]
    assert project["project"]["license"] == "Apache-2.0"
    assert "." in project["tool"]["pytest"]["ini_options"]["pythonpath"]
