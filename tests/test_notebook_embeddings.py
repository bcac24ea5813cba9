"""notebooks/embeddings.ipynb runs end to end in its FAST mode (tiny random model, few windows), so it cannot rot."""


def test_embeddings_notebook_runs_fast(run_fast_notebook):
    outputs, elapsed = run_fast_notebook("embeddings.ipynb")
    text = "".join(output.get("text", "") for output in outputs)
    assert "mode: FAST (CI)" in text
    assert "held-out accuracy" in text and "k-mer frequencies" in text
    assert any("image/png" in output.get("data", {}) for output in outputs), "the PCA plot was not drawn"
    print(f"notebook ran in {elapsed:.0f} s")  # budget: under 60 s on an idle CI machine
