"""The habits that keep the package readable (docs/ARCHITECTURE.md): no module over 700 lines (the model file
excepted: one modeling file per model is the Hugging Face convention) and no function over 80 lines. `ruff`
and `lint-imports` (the import layers) run in CI next to the tests."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_lstm"
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_modules_and_functions_stay_short(path):
    source = path.read_text()
    if path.name != "modeling_hf_lstm.py":
        assert source.count("\n") <= 700, (
            f"{path.name} has {source.count(chr(10))} lines; split it by concern"
        )
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80
    ]
    assert long == [], f"{path.name}: functions over 80 lines: {long}"
