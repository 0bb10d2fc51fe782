"""Execute every tutorial notebook end to end (fast settings: EQX_ATTR_FAST=1).

The notebooks run one after the other in ONE kernel (starting a kernel and
importing JAX costs seconds per notebook); each starts from an empty namespace
(`%reset -f`), so none can lean on another's variables.
"""

import json
import pathlib
import sys

import nbclient
import nbformat
import pytest
from jupyter_core.utils import run_sync

NOTEBOOKS = sorted(
    (pathlib.Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb")
)
KERNEL = "eqx-attr-test"


def test_all_five_notebooks_exist():
    names = [p.stem for p in NOTEBOOKS]
    assert names == [
        "01_mnist_tour",
        "02_integrated_gradients_baselines",
        "03_cnn_vs_vit",
        "04_axioms",
        "05_evaluating_explanations",
        "06_decoy_mnist",
        "07_inside_the_network",
    ]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory, monkeypatch_module):
    # A kernel spec whose interpreter is THIS Python (the venv's), whatever
    # kernels the user has installed; a private cache so the test is hermetic
    # (the notebooks share it, so only the first one trains).
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"})
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(root))
    monkeypatch_module.setenv("EQX_ATTR_FAST", "1")
    monkeypatch_module.setenv("EQX_ATTR_CACHE", str(root / "cache"))
    return root


@pytest.fixture(scope="module")
def kernel(kernel_env):
    """Runs a notebook in the module's one kernel (started by the first
    notebook's client, kept alive for the next ones, shut down at the end)."""
    shared: dict = {}

    def run(nb, path):
        client = nbclient.NotebookClient(
            nb,
            km=shared.get("km"),
            kernel_name=KERNEL,
            timeout=300,
            resources={"metadata": {"path": str(path.parent)}},
        )
        client.execute(cleanup_kc=False)
        shared["km"] = client.km

    yield run
    if "km" in shared:
        run_sync(shared["km"].shutdown_kernel)(now=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")  # one worker runs them in order (shared cache)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel):
    nb = nbformat.read(path, as_version=4)
    # A fresh namespace in the shared kernel (modules stay imported).
    nb.cells.insert(0, nbformat.v4.new_code_cell("%reset -f"))
    kernel(nb, path)  # raises CellExecutionError, with the cell, on any error
    del nb.cells[0]
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    # Every figure the notebook displays made it into the outputs.
    n_displays = sum(
        cell.source.count("display(") for cell in nb.cells if cell.cell_type == "code"
    )
    n_images = sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert n_images == n_displays
