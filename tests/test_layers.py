"""The package's import structure, read from the source: no module import cycle, and no
module importing one of a higher layer (docs/architecture.md, "Package layering"). Every
import counts, including those inside functions."""

from __future__ import annotations

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Source folder -> import name (pyproject's package-dir).
FOLDERS = {"sonichu_jax": "sonichu_jax", "convert": "sonichu_jax.convert", "train": "sonichu_jax.train",
           "configs": "sonichu_jax.configs"}
# Lowest first; a module may import its own layer and those below it. The first pattern
# that matches a module name gives its layer.
LAYERS = (
    ("foundation", r"sonichu_jax(\.(errors|fileio|config|posembed))?"),
    ("convert", r"sonichu_jax\.convert(\..*)?"),
    ("library", r"sonichu_jax\.(?!train\b|configs\b|commands\b|cli\b|__main__\b).*"),
    ("train", r"sonichu_jax\.train(\..*)?"),
    ("configs", r"sonichu_jax\.configs(\..*)?"),
    ("cli", r"sonichu_jax\.(__main__|cli|commands(\..*)?)"),
)


def _modules() -> dict[str, str]:
    """Import name -> source file, for every module of the library."""
    found = {}
    for folder, package in FOLDERS.items():
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, folder)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            relative = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            prefix = package if relative == "." else package + "." + relative.replace(os.sep, ".")
            for name in filenames:
                if name.endswith(".py"):
                    module = prefix if name == "__init__.py" else f"{prefix}.{name[:-3]}"
                    found[module] = os.path.join(dirpath, name)
    return found


def _imports(module: str, path: str, known: set[str]) -> set[str]:
    """The library modules ``module`` imports anywhere in its source."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import a.b.c` of a name inside a module
                name = name.rpartition(".")[0]
            while name and not module.startswith(name + "."):  # a.b.c runs a/__init__ and a/b/__init__ too
                if name != module:
                    out.add(name)
                name = name.rpartition(".")[0]
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, path, set(modules)) for m, path in modules.items()}


def _layer(module: str) -> int:
    for i, (_, pattern) in enumerate(LAYERS):
        if re.fullmatch(pattern, module):
            return i
    raise AssertionError(f"{module} is in no layer")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_reader_sees_every_kind_of_import(tmp_path):
    known = {"sonichu_jax", "sonichu_jax.errors", "sonichu_jax.convert", "sonichu_jax.convert.files",
             "sonichu_jax.nn", "sonichu_jax.nn.vit"}
    source = tmp_path / "m.py"
    source.write_text("import sonichu_jax.errors\nfrom sonichu_jax.convert import files\n"
                      "def f():\n    from . import vit\n    import numpy\n")
    assert _imports("sonichu_jax.nn.m", str(source), known) == {
        "sonichu_jax.errors", "sonichu_jax.convert", "sonichu_jax.convert.files", "sonichu_jax.nn.vit"}


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_import_cycle():
    assert _cycles(_graph()) == []


def test_no_module_imports_a_higher_layer():
    graph = _graph()
    assert len(graph) > 100  # the walk found the library
    upward = sorted(f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
                    for m, deps in graph.items() for d in deps if _layer(d) > _layer(m))
    assert upward == []
