"""The method catalogue: torch-free, declared by keyword with a reference each, and every entry
bound to exactly one computation."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from evomerge.merge.catalog import CATALOG
from evomerge.merge.methods import METHODS

PACKAGE = Path(__file__).parents[2] / "evomerge"


def test_recipes_and_spaces_validate_without_torch() -> None:
    code = (
        "import sys; import evomerge.recipe, evomerge.space, evomerge.merge.catalog; "
        "sys.exit(int('torch' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "importing them loaded torch"


def test_recipe_and_space_import_the_catalogue_at_the_top() -> None:
    for module in ("recipe.py", "space.py"):
        tree = ast.parse((PACKAGE / module).read_text())
        top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
        assert "evomerge.merge.catalog" in top, module
        nested = [
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            and node not in tree.body
            and "merge.methods" in (node.module or "")
        ]
        assert not nested, f"{module} imports {nested} inside a function"


def test_every_declaration_has_a_reference_and_a_computation() -> None:
    assert CATALOG.names() == METHODS.names() and len(CATALOG.names()) == 20
    for name in CATALOG.names():
        spec, method = CATALOG.get(name), METHODS.get(name)
        assert spec.reference.startswith("https://"), name
        assert (method.name, method.params, method.needs_base) == (spec.name, spec.params, spec.needs_base)
        assert callable(method.fn)


def test_declarations_are_keyword_only() -> None:
    tree = ast.parse((PACKAGE / "merge" / "catalog.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("ParamSpec", "MethodSpec")
    ]
    assert calls and all(not call.args for call in calls)
