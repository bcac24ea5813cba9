"""notebooks/embeddings.ipynb runs end to end in its FAST mode (tiny random model, few windows), so it cannot rot."""

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NOTEBOOK = REPO / "notebooks" / "embeddings.ipynb"


@pytest.mark.skipif(not (SHARED_DATA / "species" / "bacteria").is_dir(), reason="needs shared/data/species/bacteria")
def test_embeddings_notebook_runs_fast(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits this process's environment; jupyter_client starts the "python3" kernel with this
    # interpreter (sys.executable), so it sees the same installed dna_mamba.
    monkeypatch.setenv("DNA_MAMBA_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("DNA_MAMBA_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.delenv("DNA_MAMBA_MODEL", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    started = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - started

    outputs = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for output in cell.get("outputs", []))
    assert "mode: FAST (CI)" in outputs
    assert "held-out accuracy" in outputs and "k-mer frequencies" in outputs
    assert any("image/png" in output.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
               for output in cell.get("outputs", [])), "the PCA plot was not drawn"
    print(f"notebook ran in {elapsed:.0f} s")  # budget: under 60 s on an idle CI machine
