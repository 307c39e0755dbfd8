"""The Colab notebook (examples/mobilenet_colab_tpu.ipynb) runs top to bottom on CPU, tiny settings, via nbclient."""

import json
import pathlib

import pytest

nbclient = pytest.importorskip("nbclient", reason="running the notebook needs nbclient and ipykernel (test extra)")
nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "mobilenet_colab_tpu.ipynb"


def _load():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_the_notebook_is_a_colab_tpu_notebook_that_installs_jdw_with_one_pip_line():
    notebook = _load()
    nbformat.validate(notebook)
    assert notebook.metadata["accelerator"] == "TPU" and notebook.metadata["kernelspec"]["name"] == "python3"
    sources = ["".join(cell.source) for cell in notebook.cells if cell.cell_type == "code"]
    installs = [line for source in sources for line in source.splitlines() if line.lstrip().startswith("%pip")]
    assert installs == ['%pip install -q {PIP_FLAGS} "{JDW}"']
    parameters = next(cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", []))
    assert 'JDW = "jdw[examples] @ git+https://github.com/jdw-dev/jdw"' in parameters.source
    # Nothing to upload, no checkout on sys.path: the notebook uses the installed package only.
    assert not any("sys.path" in source or "upload" in source.lower() for source in sources)
    assert (
        "colab.research.google.com/github/jdw-dev/jdw/blob/main/examples/mobilenet_colab_tpu.ipynb"
        in (ROOT / "README.md").read_text()
    )


def test_the_notebook_runs_top_to_bottom_on_cpu(tmp_path, monkeypatch):
    notebook = _load()
    # The parameters cell is followed by tiny settings, as papermill would inject them: the pip line resolves
    # this checkout without installing it (no network here), and one epoch of a small network on the digits.
    overrides = {
        "JDW": f"jdw[examples] @ {ROOT.as_uri()}",
        "PIP_FLAGS": "--dry-run --no-deps --verbose",  # -q -v: pip says what it would install
        "DATASET": "digits",
        "EPOCHS": 1,
        "OPTIONS": {"model": "mobilenet_v1", "width": 0.25, "image_size": 16, "batch_size": 128},
    }
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in overrides.items())
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    outputs = {cell.id: cell.outputs for cell in notebook.cells if cell.cell_type == "code" and "id" in cell}
    text = lambda cell_id: "".join(o.get("text", "") + json.dumps(o.get("data", {})) for o in outputs[cell_id])
    assert "Would install jdw-" in text("install")  # pip resolved the checkout's metadata and extras
    assert "1 devices" in text("check") and "No TPU here (platform 'cpu')" in text("check")
    assert "finished at step" in text("train") and "test accuracy" in text("train")
    assert any("image/png" in o.get("data", {}) for o in outputs["curves"])
    summary = json.loads((tmp_path / "runs" / "digits_colab" / "summary.json").read_text())
    assert summary["finished"] and summary["step"] > 0
