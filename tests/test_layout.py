"""The layout holds: no import cycle in harness/ or reference_impl/, no module over 600 lines,
no function over 100 lines, reference_impl never imports harness, checkers import only the
history and final-state contracts, and harness/ builds its argument parsers in one module.

The import graph is read from the source with `ast` (every import, at module
level or inside a function: a lazy import still ties two modules together).
"""

from __future__ import annotations

import ast
import functools
import os
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("harness", "reference_impl")
MAX_LINES = 600

#: Modules still over MAX_LINES, each with its owner's split to come; shrink this list, never grow it.
TOO_LONG_ALLOWED: set = set()  # every module is under the limit; a new exception needs a reason here


def modules() -> Dict[str, str]:
    """Dotted module name -> path, for every .py file of the packages."""
    out = {}
    for pkg in PACKAGES:
        for d, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = path
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> Dict[str, Set[str]]:
    """module -> the modules of the packages it imports (a submodule import counts as its module)."""
    mods = modules()
    graph: Dict[str, Set[str]] = {}
    for mod, path in mods.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_pkg = path.endswith("__init__.py")
        deps: Set[str] = set()
        for node in ast.walk(tree):
            names: List[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                names = [f"{target}.{a.name}" for a in node.names] + [target]
            for n in names:
                # the longest prefix that is one of our modules
                parts = n.split(".")
                for k in range(len(parts), 0, -1):
                    cand = ".".join(parts[:k])
                    if cand in mods:
                        if cand != mod:
                            deps.add(cand)
                        break
        graph[mod] = deps
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted.

    A package importing its own submodules (and they, names of the package's
    other submodules through it) is not a cycle of interest; edges from a
    module to a package that contains it are left out.
    """
    def edges(m: str):
        return [d for d in graph[m] if not m.startswith(d + ".")]

    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_reference_impl_never_imports_harness():
    graph = import_graph()
    bad = {m: sorted(d for d in deps if d.split(".")[0] == "harness")
           for m, deps in graph.items() if m.split(".")[0] == "reference_impl"}
    assert not {m: d for m, d in bad.items() if d}


def test_no_module_over_600_lines():
    long = {}
    for mod, path in modules().items():
        with open(path) as f:
            n = sum(1 for _ in f)
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        if n > MAX_LINES and rel not in TOO_LONG_ALLOWED:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_cycle_finder_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"p": {"p.x"}, "p.x": {"p"}}) == []  # a package and its own submodule


#: The one module that builds argument parsers (every subcommand is a subparser of its tree).
PARSER_MODULE = "harness/arguments.py"
MAX_FUNCTION_LINES = 100
#: Functions still over MAX_FUNCTION_LINES ("path:name"); shrink this list, never grow it.
LONG_FUNCTIONS_ALLOWED: set = set()
#: What a checker may import besides the standard library and the checkers package: the contracts
#: it is a pure function of (the history and the final state).
CHECKER_IMPORTS_ALLOWED = {"harness.history", "harness.final_state"}


@functools.lru_cache(maxsize=1)
def _trees():
    out = []
    for mod, path in modules().items():
        with open(path) as f:
            out.append((mod, os.path.relpath(path, ROOT).replace(os.sep, "/"), ast.parse(f.read(), path)))
    return out


def argument_parsers_outside(parser_module: str = PARSER_MODULE) -> List[str]:
    """`path:line` of every argparse.ArgumentParser(...) built in harness/ outside the parser module."""
    out = []
    for mod, rel, tree in _trees():
        if not rel.startswith("harness/") or rel == parser_module:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if name == "ArgumentParser":
                    out.append(f"{rel}:{node.lineno}")
    return out


def long_functions(limit: int = MAX_FUNCTION_LINES) -> Dict[str, int]:
    """`path:name` -> lines, for every function or method over `limit` lines."""
    out = {}
    for mod, rel, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out[f"{rel}:{node.name}"] = n
    return out


def checker_imports(graph: Dict[str, Set[str]]) -> Dict[str, List[str]]:
    """checker module -> the modules of our packages it imports beyond checkers/ and the contracts."""
    bad = {}
    for mod, deps in graph.items():
        if mod == "harness.checkers" or mod.startswith("harness.checkers."):
            extra = sorted(d for d in deps if not (d == "harness.checkers" or d.startswith("harness.checkers.")
                                                   or d in CHECKER_IMPORTS_ALLOWED))
            if extra:
                bad[mod] = extra
    return bad


def test_one_argument_parser():
    assert argument_parsers_outside() == [], f"build subcommands in {PARSER_MODULE}"


def test_no_function_over_100_lines():
    found = long_functions()
    over = {k: v for k, v in found.items() if k not in LONG_FUNCTIONS_ALLOWED}
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines: {over}"
    stale = sorted(LONG_FUNCTIONS_ALLOWED - set(found))
    assert not stale, f"no longer over the limit, remove from LONG_FUNCTIONS_ALLOWED: {stale}"


def test_checkers_import_only_the_contracts():
    assert checker_imports(import_graph()) == {}


def test_the_layout_checks_can_fail():
    assert checker_imports({"harness.checkers.p9": {"harness.checkers", "harness.history", "harness.cli"}}) == \
        {"harness.checkers.p9": ["harness.cli"]}
    assert long_functions(limit=1000) == {}
    assert "harness/cli.py:main" in long_functions(limit=2)
    assert any(p.startswith(PARSER_MODULE + ":") for p in argument_parsers_outside(parser_module="none"))


FAULT_LAYER = "harness/faults/"


def fault_kinds_defined_outside(sources: Dict[str, str], kinds) -> List[str]:
    """Where `sources` (path -> text) define a fault kind outside the fault layer: a class built on a
    fault class or registered with `fault_kind`, a fault written as a dict (`"kind"` naming a kind, with
    a `"target"`), or a name bound to a list of kind names of its own."""
    from harness import faults

    bases = {name for name, obj in vars(faults).items() if isinstance(obj, type) and issubclass(obj, faults.Fault)}
    found = []
    for path, text in sorted(sources.items()):
        if path.replace(os.sep, "/").startswith(FAULT_LAYER):
            continue
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.ClassDef):
                names = {getattr(b, "id", getattr(b, "attr", None)) for b in node.bases}
                names |= {getattr(d, "id", getattr(d, "attr", None)) for d in node.decorator_list}
                if names & (bases | {"fault_kind"}):
                    found.append(f"{path}:{node.lineno} class {node.name}")
            elif isinstance(node, ast.Dict):
                keys = {k.value: v for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)}
                kind = keys.get("kind")
                if "target" in keys and isinstance(kind, ast.Constant) and kind.value in kinds:
                    found.append(f"{path}:{node.lineno} a {kind.value!r} fault as a dict")
            elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, (ast.Tuple, ast.List)) \
                    and len(node.value.elts) >= 2 and all(isinstance(e, ast.Constant) and e.value in kinds
                                                         for e in node.value.elts):
                found.append(f"{path}:{node.lineno} a list of fault kinds")
    return found


def test_fault_kinds_are_defined_only_in_the_fault_layer():
    from harness.faults import KINDS

    sources = {}
    for path in modules().values():
        rel = os.path.relpath(path, ROOT)
        if rel.startswith("harness"):
            with open(path) as f:
                sources[rel] = f.read()
    assert not fault_kinds_defined_outside(sources, set(KINDS))
    planted = {"harness/x.py": 'from harness.faults import Timed\nclass Nuke(Timed):\n    kind = "nuke"\n',
               "harness/y.py": 'F = {"kind": "kill", "target": "consumer", "at_s": 1}\n',
               "harness/z.py": 'FAULT_KINDS = ("kill", "pause")\n',
               "harness/faults/ok.py": 'FAULT_KINDS = ("kill", "pause")\n'}
    assert [w.split(":")[0] for w in fault_kinds_defined_outside(planted, set(KINDS))] == [
        "harness/x.py", "harness/y.py", "harness/z.py"]
