"""The notebook runs top to bottom with tiny parameters, as papermill would inject them."""

import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "normalization_study.ipynb"


def test_notebook_runs_with_tiny_parameters(tmp_path, mnist):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert params == [1], "the first code cell must be the one tagged 'parameters'"
    out = tmp_path / "study"
    suggested = re.search(r"`(EPOCHS = \d+)` and `(TRAIN_LIMIT = \d+)` for a smoke test", nb.cells[0].source)
    assert suggested, "the introduction suggests smoke-test values"
    nb.cells.insert(2, nbformat.v4.new_code_cell(  # the values it suggests; variant names as a user may type them
        f"{suggested[1]}\n{suggested[2]}\nTEST_LIMIT = 300\nVARIANTS = ['BN+L1', 'GN', 'LN']\nOUT = {str(out)!r}\n"
        "DEVICE = 'cpu'"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 5  # two graphs + three grids
    assert (out / "report.md").is_file()
    text = "".join(o.get("text", "") for o in outputs)
    assert "ends best" in text and "source:" in text
