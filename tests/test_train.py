"""End-to-end pretraining on CPU: fast_dev_run, a short real run with export, resume, and bad input."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from conftest import run_training as run

from dna_mamba.lit.plots import read_metrics
from dna_mamba.lit.pretrain import PretrainModule
from dna_mamba.model import load_pretrained

TINY = ["model=tiny", "trainer=cpu", "trainer.enable_progress_bar=false", "context=1k",
        "trainer.tokens_per_step=4096", "trainer.micro_batch_tokens=2048", "data.max_val_windows=4"]


def test_fast_dev_run(tmp_path, store_cache):
    summary = run([*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.fast_dev_run=true"])
    assert summary["global_step"] == 1


def test_short_run_trains_evaluates_exports_and_resumes(tmp_path, store_cache):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.val_check_interval=4",
            "trainer.checkpoint_every_n_steps=3", "trainer.log_every_n_steps=1", "optim.lr=3e-2",
            "optim.warmup_fraction=0"]
    summary = run([*base, "trainer.max_steps=7"])
    assert summary["global_step"] == 7 and "stopped_early" not in summary
    assert 0 < summary["val_bits_per_base"] < 3.0  # 4 bits at init (16 logits); learning puts mass on A, C, G, T
    assert 1.5 < summary["markov_bits_per_base"] < 2.0  # E. coli is close to 2 bits/base at short orders
    # Periodic saves came at steps 3 and 6; the run's end is saved too, so a resume loses nothing.
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 7
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["global_step"] == 7
    model = load_pretrained(tmp_path / "model")
    tokens = torch.randint(0, 4, (1, 64))
    assert torch.isfinite(model(tokens).logits).all()

    # Resume continues the step count from last.ckpt instead of starting over, and the metrics file (which the
    # curves are drawn from) keeps the rows of the first part: every step logged once.
    resumed = run([*base, "trainer.max_steps=10", "resume=auto"])
    assert resumed["global_step"] == 10
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10
    metrics = read_metrics(tmp_path / "logs" / "metrics.csv")
    assert [step for step, _ in metrics["train/loss"]] == list(range(10))
    assert [step for step, _ in metrics["val/bits_per_base"]][:2] == [1, 3]  # validations of the first part


def test_resume_trains_the_batches_of_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    # A genome of 5 training batches per epoch, 2 accumulated per step: steps 0-2 are epoch 0 (its last step of one
    # batch), 3-5 epoch 1. Stopping after step 3 (an epoch's end) and 5 (mid-epoch) and resuming each time must give
    # the batches, epochs and steps of one run. (Resumed from a checkpoint of fit's end, Lightning 2.6 ran a stray
    # one-batch epoch after the first stop and numbered every later epoch one too high after the second.)
    rng = np.random.default_rng(0)
    genome = tmp_path / "genome.fa"
    genome.write_text(">chr\n" + "".join(rng.choice(list("ACGT"), 12_000)) + "\n")
    seen = []
    train_step = PretrainModule.training_step

    def recorded(self, batch, batch_idx):
        seen.append((self.current_epoch, batch_idx, self.global_step, hash(batch.numpy().tobytes())))
        return train_step(self, batch, batch_idx)

    monkeypatch.setattr(PretrainModule, "training_step", recorded)
    base = [*TINY, "data=fasta", f"data.fasta=[{genome}]", f"data.cache_dir={tmp_path / 'stores'}",
            "task.run_baseline=false", "task.export=false", "trainer.val_check_interval=4", "trainer.max_time=null"]
    assert run([*base, f"out_dir={tmp_path / 'whole'}", "trainer.max_steps=8"])["global_step"] == 8
    whole, seen[:] = list(seen), []
    assert [epoch for epoch, *_ in whole] == [0] * 5 + [1] * 5 + [2] * 4
    assert len({batch for *_, batch in whole}) == len(whole)  # the windows differ from batch to batch
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for steps in (3, 5, 8):
            resume = ["resume=auto"] if steps > 3 else []
            assert run([*base, f"out_dir={tmp_path / 'parts'}", f"trainer.max_steps={steps}", *resume])[
                "global_step"] == steps
    # The same windows in the same batches, also after the mid-epoch resume (step 5 ends on epoch 1's 4th batch of
    # 5): the loader's place is in the checkpoint. (A resumed run drew the rest of that epoch from a new shuffle.)
    assert seen == whole
    out = capsys.readouterr().out
    assert "resuming in the middle of epoch" not in out
    assert not [w for w in caught if "ended before the epoch ended" in str(w.message)]


def test_init_from_saved_model(tmp_path, store_cache):
    first = tmp_path / "first"
    run([*TINY, f"out_dir={first}", f"data.cache_dir={store_cache}", "trainer.max_steps=2",
         "task.run_baseline=false"])
    second = tmp_path / "second"
    run([*TINY, f"out_dir={second}", f"data.cache_dir={store_cache}", "trainer.max_steps=1",
         f"init_from={first / 'model'}", "task.run_baseline=false", "optim.lr=1e-12"])
    a, b = load_pretrained(first / "model"), load_pretrained(second / "model")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def cli(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dna_mamba.train", *args, f"out_dir={tmp_path}/run"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_missing_fasta_is_one_line_error(tmp_path):
    result = cli(["data=fasta", "data.fasta=[does_not_exist.fa]", *TINY], tmp_path)
    assert result.returncode == 1
    assert "does_not_exist.fa" in result.stderr and "Traceback" not in result.stderr


def test_malformed_fasta_is_one_line_error_and_debug_shows_traceback(tmp_path):
    bad = tmp_path / "bad.fa"
    bad.write_text(">chr1\nACGTXACGT\n")
    result = cli(["data=fasta", f"data.fasta=[{bad}]", *TINY], tmp_path)
    assert result.returncode == 1
    assert "bad.fa" in result.stderr and "chr1" in result.stderr and "Traceback" not in result.stderr
    debug = cli(["--debug", "data=fasta", f"data.fasta=[{bad}]", *TINY], tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_the_run_records_its_settings_and_a_refused_launch_leaves_them_alone(tmp_path, store_cache):
    base = [*TINY, "trainer.max_steps=1", "task.run_baseline=false", "task.export=false",
            f"data.cache_dir={store_cache}"]
    first = cli([*base, "optim.lr=0.004"], tmp_path)
    assert first.returncode == 0, first.stderr
    # Lightning's log lines that tell the user nothing they can act on stay out of the run's output.
    for noise in ("weights_only", "Tip:", "LeafSpec"):
        assert noise not in first.stdout + first.stderr, noise
    record = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: 0.004" in record and "seq_len: 1024" in record  # composed and resolved
    # A second new run under the same name is refused; the record of the run it protects must survive it. (Hydra's
    # own .hydra/ record, written before the run starts, was overwritten by the refused launch.)
    refused = cli([*base, "optim.lr=0.001"], tmp_path)
    assert refused.returncode == 1 and "already holds a run" in refused.stderr
    assert (tmp_path / "run" / "config.yaml").read_text() == record
    assert not (tmp_path / "run" / ".hydra").exists()
    # Resuming is a launch of the same run: it records its own settings.
    resumed = cli([*base, "trainer.max_steps=2", "resume=auto"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "max_steps: 2" in (tmp_path / "run" / "config.yaml").read_text()
