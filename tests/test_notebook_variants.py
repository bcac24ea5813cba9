"""notebooks/variant_effect.ipynb runs end to end in its FAST mode (tiny random model, small windows), as in CI."""


def test_variant_effect_notebook_runs_fast(run_fast_notebook):
    outputs, elapsed = run_fast_notebook("variant_effect.ipynb")
    text = "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs)
    assert "fast=True" in text and "416 SNVs, skipped: 0" in text
    assert "AUROC" in text and "Markov LLR" in text and "control region" in text and "per fold" in text
    assert any("image/png" in output.get("data", {}) for output in outputs), "the ROC plot was not drawn"
    print(f"notebook ran in {elapsed:.0f} s")  # budget: under 60 s on an idle CI machine (about 27 s here, loaded)
    assert elapsed < 120, f"the FAST notebook took {elapsed:.0f} s"
