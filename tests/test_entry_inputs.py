"""Bad input at the entry points that read models and checkpoints: one clear error naming the file, never a
traceback, never a silently different model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dna_mamba.cli import main as cli_main
from dna_mamba.export import export_checkpoint
from dna_mamba.model import DnaMambaConfig, DnaMambaLM, load_pretrained, save_pretrained
from dna_mamba.species.cli import sweep_main

TINY = dict(d_model=16, n_layer=2, d_state=4, d_conv=4, expand=2)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_pretrained(DnaMambaLM(DnaMambaConfig(**TINY)), tmp_path / "model")


def edit_config(directory: Path, change) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.pop("norm_eps"), "config.json: missing model field.s. norm_eps"),
    (lambda c: c.update(d_modle=16), r"config.json: unknown DnaMambaConfig fields: \['d_modle'\]"),
    (lambda c: c.update(residual_in_fp32="no"), "config.json: .*residual_in_fp32 must be true or false"),
    (lambda c: c.update(dt_min="0.001"), "config.json: .*dt_min must be a number"),
    (lambda c: c.update(norm_eps=-1.0), "config.json: .*norm_eps must be positive"),
    (lambda c: c.update(d_conv=7), "config.json: .*d_conv must be in 2..4"),
    (lambda c: c.update(model_type="bert"), "config.json: not a dna_mamba model config .model_type 'bert'."),
    (lambda c: c.update(format_version=2), "config.json: format_version 2; this dna_mamba reads version 1"),
])
def test_bad_config_json_is_one_clear_error(model_dir: Path, change, message) -> None:
    edit_config(model_dir, change)
    with pytest.raises(ValueError, match=message):
        load_pretrained(model_dir)


def test_config_json_that_is_not_a_config(model_dir: Path) -> None:
    (model_dir / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_pretrained(model_dir)
    (model_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json: not a dna_mamba model config"):
        load_pretrained(model_dir)


def test_weights_that_do_not_match_the_config(model_dir: Path) -> None:
    weights = model_dir / "model.safetensors"
    state = load_file(weights)
    edit_config(model_dir, lambda c: c.update(d_model=32))
    with pytest.raises(ValueError, match=r"model.safetensors: weights do not match the model config; wrong shape: "
                                         r"embedding.weight \(16, 16\) where the config needs \(16, 32\)"):
        load_pretrained(model_dir)
    edit_config(model_dir, lambda c: c.update(d_model=16))
    save_file({**{k: v for k, v in state.items() if k != "layers.1.mixer.D"}, "extra": torch.zeros(1)}, weights)
    with pytest.raises(ValueError, match=r"missing: layers.1.mixer.D \(1\); unexpected: extra \(1\)"):
        load_pretrained(model_dir)
    weights.write_bytes(weights.read_bytes()[:500])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_pretrained(model_dir)


def test_paths_that_are_not_model_directories(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_pretrained(model_dir / "config.json")
    # A species classifier directory keeps its backbone in model/: say so rather than only "not a model".
    (tmp_path / "classifier").mkdir()
    model_dir.rename(tmp_path / "classifier" / "model")
    with pytest.raises(FileNotFoundError, match="the model is in its model/ subfolder"):
        load_pretrained(tmp_path / "classifier")


def test_save_pretrained_refuses_to_replace_other_files(tmp_path: Path, model_dir: Path) -> None:
    model = load_pretrained(model_dir)
    user = tmp_path / "notes"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not a saved dna_mamba model; refusing"):
        save_pretrained(model, user)
    assert (user / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="exists and is not a directory"):
        save_pretrained(model, user / "keep.txt")
    save_pretrained(model, model_dir)  # a saved model is replaced


def write_checkpoint(path: Path, model: DnaMambaLM, **hparams) -> Path:
    """The parts of a Lightning checkpoint that export reads: hyperparameters and the module's state dict."""
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state["head.linear.weight"] = torch.zeros(2, 16)  # a species checkpoint's head: not part of the export
    torch.save({"global_step": 5, "hyper_parameters": {"model_config": model.config.to_dict(), **hparams},
                "state_dict": state}, path)
    return path


def test_export_round_trip_and_bad_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = DnaMambaLM(DnaMambaConfig(**TINY))
    ckpt = write_checkpoint(tmp_path / "last.ckpt", model)
    exported = load_pretrained(export_checkpoint(ckpt, tmp_path / "out"))
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name], tensor, rtol=0, atol=0)

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    (tmp_path / "text.ckpt").write_text("label\tpath\n")
    torch.save([1, 2], tmp_path / "list.ckpt")
    bad_config = write_checkpoint(tmp_path / "bad_config.ckpt", model)
    data = torch.load(bad_config, weights_only=True)
    data["hyper_parameters"]["model_config"]["d_model"] = "x"
    torch.save(data, bad_config)
    other_size = write_checkpoint(tmp_path / "other_size.ckpt", model)
    data = torch.load(other_size, weights_only=True)
    data["hyper_parameters"]["model_config"]["d_model"] = 32
    torch.save(data, other_size)
    cases = [
        (truncated, "not a readable PyTorch checkpoint"),
        (tmp_path / "text.ckpt", "not a readable PyTorch checkpoint"),
        (tmp_path / "list.ckpt", "not a dna_mamba training checkpoint"),
        (bad_config, "bad model_config: DnaMambaConfig.d_model must be a positive integer, got 'x'"),
        (other_size, "weights do not match the model config; wrong shape"),
        (tmp_path / "out", "is a saved model directory already; pass a Lightning .ckpt file"),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            export_checkpoint(path, tmp_path / "again")
        assert str(path) in str(info.value)
    assert not (tmp_path / "again").exists()


def test_export_cli_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.ckpt").write_text("not a checkpoint")
    with pytest.raises(SystemExit) as info:
        cli_main(["export", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'x.ckpt'}: not a readable PyTorch checkpoint")


@pytest.mark.parametrize(("args", "message"), [
    (["--contexts", ","], "--contexts ',' lists no context length"),
    (["--contexts", "1k", "--kmer", "4,x"], "--kmer '4,x' must be comma-separated k-mer sizes"),
])
def test_sweep_options_that_would_do_nothing_or_crash(tmp_path: Path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as info:
        sweep_main(["manifest.tsv", "--out", str(tmp_path / "sweep"), "--kmer-only", *args])
    assert info.value.code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


def test_info_without_a_model_describes_the_shipped_human_model(capsys, monkeypatch, tmp_path: Path) -> None:
    from dna_mamba.tasks import variants

    assert cli_main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{variants.HUMAN_MODEL_DIR}: ") and "12 Mamba blocks of d_model 128" in out
    monkeypatch.setattr(variants, "HUMAN_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(SystemExit) as info:
        cli_main(["info"])
    assert info.value.code == 1
    assert f"error: no model given and no shipped human model in {tmp_path / 'missing'}" in capsys.readouterr().err
