"""The layers are a test, not a convention.

The repository's first-party modules (`app`, `worker`, `tas`) are read as source (nothing is
imported) and every import is checked against the layer rules below: the ML core stands alone
(plain PyTorch, nothing of the service, not even its settings or errors); the shared store never
reaches up into the API, the worker or the composition root; the API and the worker never import
each other; only the composition root (`tas.cli`, `tas.embedded`, `tas.__main__`) wires them
together. And no two first-party modules import each other, directly or around a longer loop:
such a loop works only by the accident of which module is imported first.

What counts as an import: `import x` and `from x import y` anywhere in a module (at module level
or inside a function: a deferred import is still a dependency, it only fails later),
`importlib.import_module("x")` with a literal name, and a string literal naming a first-party
module (`"pkg.mod"` or `"pkg.mod:attr"`, the form Celery and uvicorn resolve): a string copy of a
module path is an import the linter cannot see. Imports under `if TYPE_CHECKING:` are never
executed, so they count for the layer rules but not for cycles.

The fixture tests at the end build a small package tree with a violation and a cycle of each
kind, so a checker that silently finds nothing fails here too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("app", "worker", "tas")

#: The composition root: the one place that may import every layer (it builds the API, the
#: worker and the embedded stack from them).
ROOT = ("tas.cli", "tas.embedded", "tas.__main__")
SERVICE_LIBRARIES = ("celery", "kombu", "sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn")


@dataclass(frozen=True)
class Rule:
    """Modules under `layer` (except `exempt`) import nothing under `forbid` (except `allow`)."""

    layer: str
    forbid: tuple[str, ...]
    allow: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()
    why: str = ""


RULES = (
    Rule(
        "tas.core",
        forbid=("tas", "app", "worker", *SERVICE_LIBRARIES),
        allow=("tas.core",),
        why="the core is plain PyTorch: usable (and testable) without the service around it",
    ),
    Rule(
        "tas.store",
        forbid=("app", "worker", *ROOT, "fastapi", "starlette", "celery", "kombu"),
        why="the store holds rows and files; the API and the worker both build on it",
    ),
    Rule(
        "tas",
        forbid=("app", "worker", *ROOT),
        exempt=ROOT,
        why="the shared layer serves the API and the worker alike; only the root wires them",
    ),
    Rule(
        "tas.client",
        forbid=("tas", "app", "worker", "torch", "numpy", *SERVICE_LIBRARIES),
        allow=("tas.client",),
        why="the client installs light: a laptop drives a remote tas with httpx alone",
    ),
    Rule(
        "tas.client_cli",
        forbid=("tas", "app", "worker", "torch", "numpy", *SERVICE_LIBRARIES),
        allow=("tas.client", "tas.client_cli"),
        why="`tas jobs|datasets|models` drive the API through the client, as any remote user would",
    ),
    Rule("app", forbid=("worker", *ROOT), why="the API runs without a worker in its process"),
    Rule("worker", forbid=("app", *ROOT), why="the worker runs without the API in its process"),
)


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    type_only: bool


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def discover(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Module name -> source file, for every .py file under each package directory."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str:
    """The longest known first-party module `name` is in (`tas.store.jobs.x` -> `tas.store.jobs`);
    an outside name is returned as it is."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node under `node`, with whether it sits in an `if TYPE_CHECKING:` body."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
            continue
        yield child, type_only
        yield from _walk(child, type_only)


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def add(name: str, node: ast.AST, type_only: bool) -> None:
        target = _resolve(name, modules)
        if target != module:
            found.append(Import(module, target, getattr(node, "lineno", 0), type_only))

    for node, type_only in _walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, type_only)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
                full = f"{source}.{alias.name}"
                add(full if full in modules else source, node, type_only)
        elif (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) in {"importlib.import_module", "import_module"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            add(node.args[0].value, node, type_only)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            named = node.value.partition(":")[0]
            if named in modules and under(named, FIRST_PARTY) and "." in named:
                add(named, node, type_only)
    return found


def graph(root: Path, packages: Iterable[str]) -> list[Import]:
    modules = discover(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def layer_violations(imports: Iterable[Import], rules: Iterable[Rule]) -> list[str]:
    problems = []
    for rule in rules:
        for imp in imports:
            if (
                under(imp.importer, [rule.layer])
                and not under(imp.importer, rule.exempt)
                and under(imp.target, rule.forbid)
                and not under(imp.target, rule.allow)
            ):
                problems.append(
                    f"{imp.importer} (line {imp.line}) imports {imp.target}: "
                    f"{rule.layer} must not import {', '.join(rule.forbid)} ({rule.why})"
                )
    return problems


def cycles(imports: Iterable[Import], packages: Iterable[str]) -> list[list[str]]:
    """Each group of first-party modules that import one another (Tarjan's strongly connected
    components of more than one module), sorted."""
    packages = tuple(packages)
    edges: dict[str, set[str]] = {}
    for imp in imports:
        if not imp.type_only and under(imp.importer, packages) and under(imp.target, packages):
            edges.setdefault(imp.importer, set()).add(imp.target)
            edges.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~150)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(groups)


# --- the repository ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo_imports() -> list[Import]:
    imports = graph(REPO, FIRST_PARTY)
    # The walk really saw the tree: a wrong root or pattern would find nothing and pass.
    importers = {imp.importer for imp in imports}
    assert {
        "tas.core.pipeline",
        "tas.store.jobs",
        "app.main",
        "worker.tasks",
        "tas.cli",
    } <= importers
    return imports


def test_layers(repo_imports: list[Import]) -> None:
    assert layer_violations(repo_imports, RULES) == []


def test_no_import_cycles(repo_imports: list[Import]) -> None:
    assert cycles(repo_imports, FIRST_PARTY) == []


#: What `tas.client` may import besides itself and the standard library: the HTTP client, and
#: pydantic (which it may use for typed results; it already comes with httpx's usual company).
CLIENT_LIBRARIES = ("tas.client", "httpx", "pydantic")


def client_outsiders(imports: Iterable[Import]) -> list[str]:
    """Each import of a `tas.client` module that is neither the standard library nor one of
    CLIENT_LIBRARIES: an allow-list, so a new heavy dependency fails here before anyone names it."""
    return [
        f"{imp.importer} (line {imp.line}) imports {imp.target}"
        for imp in imports
        if under(imp.importer, ["tas.client"])
        and not under(imp.target, CLIENT_LIBRARIES)
        and imp.target.partition(".")[0] not in sys.stdlib_module_names
    ]


def test_client_imports_only_httpx_pydantic_and_the_standard_library(
    repo_imports: list[Import],
) -> None:
    assert any(under(imp.importer, ["tas.client"]) for imp in repo_imports)
    assert client_outsiders(repo_imports) == []


# --- the checker finds what it is meant to find -------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_checker_reports_a_layer_violation_and_cycles(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "tas/__init__.py": "",
            "tas/settings.py": "",
            "tas/core/__init__.py": "",
            # The core reaching for the service's settings (deferred, in a function) and for Celery.
            "tas/core/loop.py": "def f():\n    from tas.settings import Settings\n",
            "tas/core/queue.py": "import celery\n",
            # Two modules that import each other, one of them relatively.
            "tas/core/a.py": "from tas.core import b\n",
            "tas/core/b.py": "from . import a\n",
            # A loop of three, closed by a string copy of a module path.
            "worker/__init__.py": "",
            "worker/x.py": "import worker.y\n",
            "worker/y.py": "from worker.z import thing\n",
            "worker/z.py": "POOL = 'worker.x:Pool'\nthing = 1\n",
            # The store reaching into the API; only for type checking, which still counts as a layer
            # violation but not as a cycle.
            "tas/store/__init__.py": "",
            "tas/store/jobs.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import app.deps\n"
            ),
            "app/__init__.py": "",
            "app/deps.py": "from tas.store import jobs\n",
            # The composition root may import everything.
            "tas/cli.py": "import app.deps\nimport worker.x\n",
        },
    )
    imports = graph(tmp_path, FIRST_PARTY)
    found = layer_violations(imports, RULES)
    assert [p.split(" (")[0] for p in found] == [
        "tas.core.loop",
        "tas.core.queue",
        "tas.store.jobs",
        "tas.store.jobs",  # also under the `tas` layer rule
    ]
    assert "imports tas.settings" in found[0] and "imports celery" in found[1]
    assert cycles(imports, FIRST_PARTY) == [
        ["tas.core.a", "tas.core.b"],
        ["worker.x", "worker.y", "worker.z"],
    ]


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "tas/__init__.py": "",
            "tas/core/__init__.py": "",
            "tas/core/a.py": "import torch\nfrom tas.core import b\n",
            "tas/core/b.py": "X = 1\n",
            "tas/store/__init__.py": "",
            # A string naming a module this layer may import is fine.
            "tas/store/jobs.py": "from tas.core import a\nimport sqlalchemy\nB = 'tas.core.b:X'\n",
            "app/__init__.py": "",
            "app/deps.py": "from tas.store import jobs\n",
        },
    )
    imports = graph(tmp_path, FIRST_PARTY)
    assert layer_violations(imports, RULES) == []
    assert cycles(imports, FIRST_PARTY) == []
    assert len(imports) == 6


def test_checker_holds_the_client_to_its_allow_list(tmp_path: Path) -> None:
    _tree(
        tmp_path,
        {
            "tas/__init__.py": "",
            "tas/settings.py": "",
            "tas/client/__init__.py": "from tas.client import api\n",
            "tas/client/api.py": (
                "from __future__ import annotations\nimport json\nimport httpx\n"
                "from pydantic import BaseModel\n"
                "def f():\n    import torch\n    import yaml\n    from tas.settings import S\n"
            ),
        },
    )
    imports = graph(tmp_path, FIRST_PARTY)
    assert [
        p.split(" (")[0] + " " + p.split("imports ")[1].split(":")[0]
        for p in layer_violations(imports, RULES)
    ] == [
        "tas.client.api torch",
        "tas.client.api tas.settings",
    ]
    assert [p.split("imports ")[1] for p in client_outsiders(imports)] == [
        "torch",
        "yaml",
        "tas.settings",
    ]
