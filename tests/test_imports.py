"""The package's own import graph has no circles: every `import` and `from … import` of a
specbench_cli module, at the top of a file or inside a function, is an edge (ast, no imports
run). A circle means two modules that cannot be read, or moved, one without the other."""

import ast
from pathlib import Path

import specbench_cli

ROOT = Path(specbench_cli.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, name: str) -> set[str]:
    """The specbench_cli modules `path` (module `name`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else \
                (base if node.level else node.module)
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}    # `from . import x`
    return {m for m in found if m and m.startswith("specbench_cli")}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in files.items():
        # An import of a package's submodule runs the package's __init__ too, but a package is
        # not an edge to its own parent: only real modules of the project count.
        edges[name] = {m for m in imported(path, name) if m in files and m != name
                       and not name.startswith(m + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circles():
    assert cycles(graph()) == []


def test_method_files_borrow_no_other_method_files_internals():
    """A method file may import another method's class, to subclass it where it is that method
    plus one idea (Hydra on Medusa, EAGLE-3 on EAGLE-2), but nothing else from it: shared
    drafting pieces live in their own modules (methods/matrix_tree.py, drafters/)."""
    from specbench_cli.methods import METHODS
    classes: dict[str, set[str]] = {}
    for cls in METHODS.values():
        classes.setdefault(cls.__module__, set()).add(cls.__name__)
    borrowed = []
    for module in classes:
        path = ROOT.parent / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                other = f"specbench_cli.methods.{node.module}"
                if other in classes and other != module:
                    borrowed += [(module, other, a.name) for a in node.names
                                 if a.name not in classes[other]]
    assert not borrowed
    assert "specbench_cli.methods.sam" in classes          # the walk did find the method files
