"""Checkpoints and weights are loaded as tensors only, never as arbitrary pickles.

Uploaded weights and checkpoints on disk are data from outside the process: `torch.load`
without `weights_only=True` would run any code pickled into such a file."""

from __future__ import annotations

import ast
from pathlib import Path

from tas import core


def test_checkpoints_are_loaded_weights_only_everywhere() -> None:
    """Every torch.load in the core passes weights_only=True."""
    root = Path(core.__file__).parent
    calls = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls += 1
                kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert kw.get("weights_only") == "True", f"{path}: {ast.unparse(node)}"
    assert calls >= 1
