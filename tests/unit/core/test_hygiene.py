"""The core is plain PyTorch: it must not import the service around it."""

from __future__ import annotations

import ast
from pathlib import Path

from tas import core

FORBIDDEN = {"fastapi", "celery", "sqlalchemy", "app", "worker", "tas", "starlette", "kombu"}


def test_core_imports_no_service_packages() -> None:
    root = Path(core.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] in FORBIDDEN
            ]
    assert offenders == []
    assert len(list(root.rglob("*.py"))) >= 15  # the walk really saw the package


def test_checkpoints_are_loaded_weights_only_everywhere() -> None:
    """Every torch.load in core passes weights_only=True (RELIABILITY row 8)."""
    root = Path(core.__file__).parent
    calls = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("weights_only") == "True", f"{path}: {ast.unparse(node)}"
    assert calls >= 1
