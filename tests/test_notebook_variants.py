"""notebooks/variant_effect.ipynb runs end to end in its FAST mode (tiny random model, small windows), as in CI."""

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
NOTEBOOK = REPO / "notebooks" / "variant_effect.ipynb"


@pytest.mark.skipif(not (SHARED_DATA / "variants" / "chrM_mitomap").is_dir(),
                    reason="needs shared/data/variants/chrM_mitomap")
def test_variant_effect_notebook_runs_fast(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel inherits this environment and runs this interpreter, so it sees the same installed dna_mamba.
    monkeypatch.setenv("DNA_MAMBA_NOTEBOOK_FAST", "1")
    monkeypatch.setenv("DNA_MAMBA_SHARED_DATA", str(SHARED_DATA))
    monkeypatch.delenv("DNA_MAMBA_MODEL", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    started = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - started

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    text = "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    assert "fast=True" in text and "416 SNVs, skipped: 0" in text
    assert "AUROC" in text and "Markov LLR" in text and "control region" in text and "per fold" in text
    assert any("image/png" in output.get("data", {}) for output in outputs), "the ROC plot was not drawn"
    print(f"notebook ran in {elapsed:.0f} s")  # budget: under 60 s on an idle CI machine (about 27 s here, loaded)
    assert elapsed < 120, f"the FAST notebook took {elapsed:.0f} s"
