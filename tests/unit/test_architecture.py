"""The layout rules of `agent/`, read statically from the source (nothing of `agent` is imported).

No import cycles (a module that imports a module importing it back only works by accident of import order),
GraphQL sent only by the API client, modules small enough to read in one sitting, and every module on the
architecture map so a newcomer can find it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AGENT = REPO_ROOT / "agent"
ARCHITECTURE_DOC = REPO_ROOT / "docs" / "architecture.md"
MAX_LINES = 400
GRAPHQL_SENDERS = {"api/cloud.py", "api/transport.py"}  # the client's typed methods and the wire under them


# ------------------------------------------------------------------------------------------------ reading
def module_name(path: Path, root: Path) -> str:
    """`<root>/launch/pipeline.py` -> `agent.launch.pipeline`; a package's `__init__.py` is the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def agent_modules(root: Path = AGENT) -> dict[str, Path]:
    """Every module of the package under `root`, by dotted name (none found is an error, not a pass)."""
    found = {module_name(path, root): path for path in sorted(root.rglob("*.py"))
             if "__pycache__" not in path.parts}
    assert root.name in found, f"no package at {root}: every rule here would pass vacuously"
    return found


def relative(path: Path, root: Path = AGENT) -> str:
    return path.relative_to(root).as_posix()


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:` (those imports never run)."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that can run: module level, in functions and classes; not under `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            stack.extend(node.orelse)  # the `else:` branch is what runs
        else:
            stack.extend(ast.iter_child_nodes(node))


def imported_from(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `name`)."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def import_targets(name: str, node: ast.Import | ast.ImportFrom, modules: Iterable[str],
                   is_package: bool = False) -> set[str]:
    """The modules of `modules` an import statement in module `name` loads by name.

    `import a.b.c` -> the longest known prefix; `from a.b import c` -> `a.b.c` if that is a module, else
    `a.b`.
    Parents that Python initialises on the way (`a`, `a.b`) are not edges: a package's `__init__` runs before
    its submodules whatever the order, so it cannot form a cycle of the kind this test is about.
    """
    known = set(modules)
    if isinstance(node, ast.Import):
        found = set()
        for alias in node.names:
            parts = alias.name.split(".")
            prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
            found |= {next((p for p in prefixes if p in known), "")} - {""}
        return found
    source = imported_from(name, node, is_package)
    found = {f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in known}
    if source in known and any(f"{source}.{alias.name}" not in known for alias in node.names):
        found.add(source)
    return found


@dataclass
class ImportGraph:
    """Module -> imported module -> the first line of `module` that imports it."""

    edges: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def from_sources(cls, sources: Mapping[str, tuple[str, bool]]) -> ImportGraph:
        """`sources`: dotted module name -> (source text, is a package `__init__`)."""
        graph = cls({name: {} for name in sources})
        for name, (text, is_package) in sources.items():
            for node in runtime_imports(ast.parse(text)):
                for target in import_targets(name, node, sources, is_package) - {name}:
                    line = graph.edges[name].get(target, node.lineno)
                    graph.edges[name][target] = min(line, node.lineno)
        return graph

    @classmethod
    def of_package(cls, root: Path = AGENT) -> ImportGraph:
        modules = agent_modules(root)
        return cls.from_sources({name: (path.read_text(), path.name == "__init__.py")
                                 for name, path in modules.items()})


# ------------------------------------------------------------------------------------------------ cycles
def strongly_connected(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit on a long chain)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def shortest_path(edges: Mapping[str, Iterable[str]], source: str, target: str,
                  within: set[str]) -> list[str] | None:
    """Breadth-first: the fewest hops from `source` to `target` through `within` (ties broken by name)."""
    previous: dict[str, str | None] = {source: None}
    frontier = [source]
    while frontier and target not in previous:
        following = []
        for node in frontier:
            for child in sorted(set(edges.get(node, ())) & within):
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    if target not in previous:
        return None
    path: list[str] = []
    step: str | None = target
    while step is not None:
        path.append(step)
        step = previous[step]
    return path[::-1]


def canonical(cycle: list[str]) -> tuple[str, ...]:
    """A cycle `[a, b, c, a]` rotated to start at its smallest module, so each is reported once."""
    ring = cycle[:-1]
    first = ring.index(min(ring))
    rotated = ring[first:] + ring[:first]
    return (*rotated, rotated[0])


def import_cycles(graph: ImportGraph) -> list[list[str]]:
    """For every import edge that lies on a cycle, the shortest cycle through it (each cycle once).

    Every edge to cut shows up in some reported cycle, without listing the exponentially many longer ones.
    """
    found: set[tuple[str, ...]] = set()
    for group in strongly_connected(graph.edges):
        members = set(group)
        for source in group:
            for target in sorted(set(graph.edges.get(source, {})) & members):
                back = shortest_path(graph.edges, target, source, members)
                if back is not None:
                    found.add(canonical([source, *back]))
    return [list(cycle) for cycle in sorted(found, key=lambda cycle: (len(cycle), cycle))]


def describe_cycle(cycle: list[str], graph: ImportGraph) -> str:
    """`a (line 3) -> b (line 9) -> a`: each hop with the line that makes it."""
    hops = [f"{a} (line {graph.edges[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*hops, cycle[-1]])


# ------------------------------------------------------------------------------------------------ the rules
def test_no_import_cycle_among_agent_modules() -> None:
    graph = ImportGraph.of_package()
    cycles = import_cycles(graph)
    assert not cycles, (
        f"{len(cycles)} import cycle(s) in agent/ (runtime imports, function-level included, "
        f"TYPE_CHECKING excluded); each hop names the importing line:\n"
        + "\n".join(f"  {describe_cycle(cycle, graph)}" for cycle in cycles))


def execute_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "execute" or node.func.attr.startswith("_execute"):
                yield node


def test_graphql_is_sent_only_by_the_api_client() -> None:
    offenders = []
    for path in agent_modules().values():
        if relative(path) in GRAPHQL_SENDERS:
            continue
        text = path.read_text()
        for call in execute_calls(ast.parse(text)):
            receiver = ast.get_source_segment(text, call.func)
            offenders.append(f"  agent/{relative(path)}:{call.lineno}: {receiver}(...)")
        for node in ast.walk(ast.parse(text)):  # nor may anything else hold the transport
            if isinstance(node, ast.ImportFrom) and node.module == "agent.api.transport":
                offenders.append(f"  agent/{relative(path)}:{node.lineno}: imports agent.api.transport")
    assert not offenders, (
        "`.execute(` outside the API client (only agent/api/cloud.py and agent/api/transport.py may send "
        "GraphQL; add a typed method to CloudClient instead):\n" + "\n".join(offenders))


def test_every_agent_module_is_at_most_400_lines() -> None:
    sizes = {relative(path): len(path.read_text().splitlines()) for path in agent_modules().values()}
    too_long = {path: lines for path, lines in sorted(sizes.items()) if lines > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split each by what it owns):\n" + "\n".join(
        f"  agent/{path}: {lines} lines" for path, lines in too_long.items())


def is_bare_package_marker(path: Path) -> bool:
    """A package `__init__.py` holding only a docstring: the doc names the package, not the empty file."""
    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


def named_in(text: str, module_path: str) -> bool:
    """`launch/pipeline.py` (or `agent/launch/pipeline.py`) as a whole path, not the tail of another one."""
    return re.search(rf"(?<![\w./-])(?:agent/)?{re.escape(module_path)}(?!\w)", text) is not None


def test_every_agent_module_is_named_in_the_architecture_doc() -> None:
    text = ARCHITECTURE_DOC.read_text()
    missing = [relative(path) for path in agent_modules().values()
               if not is_bare_package_marker(path) and not named_in(text, relative(path))]
    assert not missing, (
        f"modules of agent/ not named in {ARCHITECTURE_DOC.relative_to(REPO_ROOT)} (name each by its path "
        "relative to agent/, e.g. `launch/pipeline.py`):\n"
        + "\n".join(f"  agent/{path}" for path in missing))


def test_the_architecture_doc_names_no_module_that_is_gone() -> None:
    subpackages = sorted(p.name for p in AGENT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    named = set(re.findall(rf"(?<![\w./-])(?:agent/)?((?:{'|'.join(subpackages)})/[\w/]+\.py)(?!\w)",
                           ARCHITECTURE_DOC.read_text()))
    gone = sorted(path for path in named if not (AGENT / path).is_file())
    assert not gone, (
        f"{ARCHITECTURE_DOC.relative_to(REPO_ROOT)} names modules that do not exist in agent/:\n"
        + "\n".join(f"  {path}" for path in gone))


# ------------------------------------------------------------------------------------------------ the checker
def graph_of(**sources: str) -> ImportGraph:
    """Modules of a package `pkg` by short name (`a` -> `pkg.a`); `pkg` itself is the `__init__`."""
    named = {("pkg" if short == "init" else f"pkg.{short}"): (text, short == "init")
             for short, text in sources.items()}
    return ImportGraph.from_sources(named)


def test_the_checker_follows_every_kind_of_import_that_runs() -> None:
    graph = graph_of(
        init="",
        a="import pkg.b\nfrom pkg import c, CONSTANT\n",
        b="def later() -> None:\n    from pkg.d import thing\n",
        c="from . import d\nfrom .e import f\nimport os\n",
        d=("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n"
           "else:\n    import pkg.e\n"),
        e="import typing\nif typing.TYPE_CHECKING:\n    import pkg.a\n",
    )
    assert graph.edges == {
        "pkg": {}, "pkg.a": {"pkg.b": 1, "pkg.c": 2, "pkg": 2}, "pkg.b": {"pkg.d": 2},
        "pkg.c": {"pkg.d": 1, "pkg.e": 2}, "pkg.d": {"pkg.e": 5}, "pkg.e": {},
    }
    assert import_cycles(graph) == []


def test_the_checker_reports_every_cycle_as_a_path_with_its_lines() -> None:
    graph = graph_of(
        init="", a="from pkg import b\n", b="import os\nfrom pkg.c import x\n",
        c="def f() -> None:\n    import pkg.a\n    import pkg.b\n", d="import pkg.d\nimport pkg.a\n",
    )
    cycles = import_cycles(graph)
    assert sorted(describe_cycle(c, graph) for c in cycles) == [
        "pkg.a (line 1) -> pkg.b (line 2) -> pkg.c (line 2) -> pkg.a",
        "pkg.b (line 2) -> pkg.c (line 3) -> pkg.b",
    ]  # a self-import is no edge; pkg.d reaches the cycle but is not on it


@pytest.mark.parametrize(("text", "found"), [
    ("See `launch/pipeline.py`.", True), ("`agent/launch/pipeline.py`", True), ("launch/pipeline.py,", True),
    ("`server/launch/pipeline.py`", False), ("`launch/pipeline.pyc`", False),
    ("`launch/pipelines.py`", False),
])
def test_a_module_is_named_by_its_whole_path(text: str, found: bool) -> None:
    assert named_in(text, "launch/pipeline.py") is found


def test_execute_calls_are_found_on_any_receiver() -> None:
    tree = ast.parse("client.execute(q)\nawait self._client.session.execute(doc)\n"
                     "execute(q)\nx.executor(q)\ncloud._execute(q)\n")
    assert sorted(call.lineno for call in execute_calls(tree)) == [1, 2, 5]
