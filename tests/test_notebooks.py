"""The committed notebooks keep the house shape: clean, thin, parameterised alike."""
import ast
import json
from pathlib import Path

import pytest

from helpers.pipeline import NOTEBOOKS

FOLDER = Path(__file__).parents[1] / "notebooks"


def cells(name):
    return json.loads((FOLDER / f"{name}.ipynb").read_text())["cells"]


def test_the_six_notebooks_exist_in_order():
    assert sorted(p.stem for p in FOLDER.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    for c in cells(name):
        if c["cell_type"] == "code":
            assert not c.get("outputs") and c.get("execution_count") is None, f"{name}: strip outputs before commit"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_title_then_parameters_cell(name):
    first, second = cells(name)[:2]
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")
    assert second["cell_type"] == "code" and "parameters" in second["metadata"].get("tags", [])
    assigned = {t.id: n.value.value for n in ast.parse("".join(second["source"])).body
                if isinstance(n, ast.Assign) for t in n.targets}
    assert assigned == {"run_dir": "", "params_file": "params/smoke.yaml"}, "literal defaults only (papermill)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_thin_no_definitions_and_teaches(name):
    code = [c for c in cells(name) if c["cell_type"] == "code"]
    for c in code:
        tree = ast.parse("".join(c["source"]).replace("%", "#"))
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(tree)), \
            f"{name}: move def/class into src/helpers"
    markdown = [c for c in cells(name) if c["cell_type"] == "markdown"]
    assert len(markdown) >= 3, f"{name}: notebooks teach; explain what each step shows"
