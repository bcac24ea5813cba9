"""What a user sees around a training run: GPU settings on a CPU, a run cut short by its time limit, resuming."""

import os
import re
import subprocess
import sys
import time
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from conftest import run_training as run
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from dna_mamba.lit import datamodule as datamodule_module
from dna_mamba.lit.callbacks import EpochSeeder, LastCheckpoint
from dna_mamba.lit.datamodule import GenomeDataConfig, GenomeDataModule
from dna_mamba.lit.plots import read_metrics
from dna_mamba.lit.runner import format_seconds

TINY = ["model=tiny", "trainer=cpu", "trainer.enable_progress_bar=false", "context=1k",
        "trainer.tokens_per_step=4096", "trainer.micro_batch_tokens=2048", "data.max_val_windows=4",
        "task.run_baseline=false", "trainer.log_every_n_steps=1"]


@pytest.mark.parametrize("overrides", [
    ["trainer=gpu"],
    ["trainer=ddp"],
    ["experiment=species_bacteria", "task.manifest=no_such_manifest.tsv"],
])
def test_gpu_settings_without_a_gpu_fail_before_any_data_work(overrides, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    # Data that does not exist: reading it first would raise FileNotFoundError, not the GPU error.
    data = [] if "experiment=species_bacteria" in overrides else ["data=fasta", "data.fasta=[no_such_genome.fa]"]
    with pytest.raises(ValueError, match=r"needs a CUDA GPU.*trainer=cpu"):
        run([*overrides, *data, f"out_dir={tmp_path}"])
    assert not (tmp_path / "checkpoints").exists()


def test_gpu_setting_without_a_gpu_is_one_line_on_the_command_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU from torch in the child
    result = subprocess.run([sys.executable, "-m", "dna_mamba.train", "task=species", "experiment=species_bacteria",
                             f"out_dir={tmp_path}/run"], capture_output=True, text=True, timeout=300, env=env,
                            cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: trainer.accelerator=gpu") and "trainer=cpu" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 2  # + the --debug hint
    assert not (tmp_path / "run").exists()  # a refused launch leaves no run folder (nor a Hydra record in one)


def test_time_limit_stop_is_reported_checkpointed_and_resumable(tmp_path, store_cache, capsys):
    # One micro-batch per step: the Timer looks at the clock after each micro-batch, so the earliest it can stop the
    # run is after step 1, however slow the machine (a stop before step 1 is the next test's case).
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.val_check_interval=1000",
            "trainer.checkpoint_every_n_steps=1000", "trainer.tokens_per_step=2048"]
    summary = run([*base, "trainer.max_steps=100000", "trainer.max_time=00:00:00:02"])
    steps = summary["global_step"]
    assert steps < 100000 and summary["planned_steps"] == 100000
    assert "trainer.max_time=00:00:00:02 stopped the run" in summary["stopped_early"]
    assert f"{steps} of 100000 planned (the time limit trainer.max_time" in capsys.readouterr().out

    # last.ckpt holds the state that was exported, not the last periodic save (none happened at 1000 steps).
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == steps
    exported = load_file(tmp_path / "model" / "model.safetensors")
    for name, value in exported.items():
        torch.testing.assert_close(ckpt["state_dict"][f"model.{name}"], value, msg=name)

    # The time limit counts the whole run, so finishing needs it lifted; the metrics then cover both parts.
    resumed = run([*base, f"trainer.max_steps={steps + 3}", "trainer.max_time=null", "resume=auto"])
    assert resumed["global_step"] == steps + 3 and "stopped_early" not in resumed
    logged = [step for step, _ in read_metrics(tmp_path / "logs" / "metrics.csv")["train/loss"]]
    assert logged == list(range(steps + 3))


def test_time_limit_spent_before_the_first_step_says_nothing_was_saved(tmp_path, store_cache, capsys):
    # A limit of zero stops the run after its first micro-batch, halfway through step 1 (two micro-batches a step).
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}"]
    summary = run([*base, "trainer.max_steps=5", "trainer.max_time=00:00:00:00"])
    assert summary["global_step"] == 0
    assert "before its first optimizer step, so nothing was trained or checkpointed" in summary["stopped_early"]
    assert "resume=auto" not in summary["stopped_early"]  # there is nothing to resume
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    # An untrained model is not exported as if it were the run's (it was, with the summary's usual line).
    assert not (tmp_path / "model").exists() and "model_dir" not in summary
    assert re.search(r"exported model +none \(no optimizer step was done\)", capsys.readouterr().out)
    # Starting again into the same folder is a new run, not a refused overwrite.
    assert run([*base, "trainer.max_steps=2"])["global_step"] == 2


def test_summary_reports_data_preparation_apart_from_training(tmp_path, store_cache, monkeypatch, capsys):
    # Opening or building a token store "takes" 1,000 s: the clock jumps while cached_store runs, so the test
    # does not depend on how fast this machine is. fit calls it (prepare_data, setup) before the first step.
    jump = {"seconds": 0.0}
    real_clock, real_store = time.perf_counter, datamodule_module.cached_store

    def slow_store(*args, **kwargs):
        jump["seconds"] += 1000.0
        return real_store(*args, **kwargs)

    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + jump["seconds"])
    monkeypatch.setattr(datamodule_module, "cached_store", slow_store)
    summary = run([*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.max_steps=2",
                   "task.export=false"])
    assert summary["data_seconds"] >= 1000 and summary["train_seconds"] < 1000
    out = capsys.readouterr().out
    assert re.search(r"data preparation time +\d+ min \d\d s\n", out)
    assert re.search(r"training time +\d+\.\d s\n", out)


def test_durations_read_as_seconds_minutes_or_hours():
    assert [format_seconds(s) for s in (0.04, 9.96, 12.3, 59.6, 250, 3599.4, 7500)] == [
        "0.0 s", "10 s", "12 s", "1 min 00 s", "4 min 10 s", "59 min 59 s", "2 h 05 min"]


@pytest.mark.parametrize("first, then", [("00:01:00:00", "null"), ("null", "00:01:00:00")])
def test_resume_with_another_time_limit_is_quiet(first, then, tmp_path, store_cache):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "task.export=false"]
    run([*base, "trainer.max_steps=1", f"trainer.max_time={first}"])
    # Capped or not, a run keeps time, so a cap set on resume covers the earlier parts too.
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["callbacks"]["Timer"]["time_elapsed"]["train"] > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run([*base, "trainer.max_steps=2", f"trainer.max_time={then}", "resume=auto"])
    assert resumed["global_step"] == 2 and "stopped_early" not in resumed
    # Lightning asks for a Timer callback when the checkpoint holds a Timer's state and the resumed run has none.
    assert not [w for w in caught if "callbacks used to create the checkpoint" in str(w.message)]


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path, store_cache):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.max_steps=1",
            "task.export=false"]
    run(base)
    # The check comes before the data is read: these genomes need not exist.
    with pytest.raises(ValueError, match=r"other data \(data\.fasta was \['embedded:ecoli'\].*name="):
        run([*base, "data=fasta", "data.fasta=[other_genome.fa]", "resume=auto"])
    with pytest.raises(ValueError, match=r"data\.val_fraction was 0\.05 and is now 0\.2"):
        run([*base, "data.val_fraction=0.2", "resume=auto"])
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.ckpt: not a readable checkpoint"):
        run([*base, f"resume={broken}"])
    # A setting that leaves the sequence alone resumes.
    assert run([*base, "trainer.max_steps=2", "data.max_val_windows=2", "resume=auto"])["global_step"] == 2


def test_a_new_run_does_not_overwrite_an_earlier_run(tmp_path, store_cache):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.max_steps=1"]
    run(base)
    saved = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    exported = (tmp_path / "model" / "model.safetensors").read_bytes()
    # Another genome under the same run name: refused before its data is read, the earlier run untouched.
    with pytest.raises(ValueError, match=r"already holds a run .*resume=auto.*name="):
        run([*base, "data=fasta", "data.fasta=[other_genome.fa]", "seed=1"])
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == saved
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == exported


def _write_fasta(path, records: dict[str, int], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for name, length in records.items():
            f.write(f">{name}\n{''.join(rng.choice(list('ACGT'), length))}\n")
    return str(path)


def test_contigs_shorter_than_the_context_are_left_out_with_a_note(tmp_path, capsys):
    # A chromosome beside a plasmid: the plasmid cannot hold a 1,024-bp window, the run goes on without it.
    fasta = _write_fasta(tmp_path / "genome.fa", {"chromosome": 20_000, "plasmid": 700})
    data = GenomeDataModule(GenomeDataConfig(fasta=[fasta], cache_dir=str(tmp_path / "stores")), seq_len=1024,
                            batch_size=2, progress=False)
    data.prepare_data()
    data.setup()
    windows = data.datasets["train"].windows
    assert len(windows) > 0 and set(windows[:, 0].tolist()) == {0}  # the chromosome's windows only
    note = "data: 1 train segment(s), 665 bp, lie on contigs shorter than the 1,024-bp context and are left out"
    assert note in capsys.readouterr().out


def test_a_context_longer_than_every_contig_names_both_lengths(tmp_path):
    fasta = _write_fasta(tmp_path / "genome.fa", {"a": 900, "b": 700})
    data = GenomeDataModule(GenomeDataConfig(fasta=[fasta], cache_dir=str(tmp_path / "stores")), seq_len=1024,
                            batch_size=2, progress=False)
    data.prepare_data()
    with pytest.raises(ValueError, match=r"no train windows of length 1,024: the longest train contig is 900 bp.*"
                                         r"data\.pad=true"):
        data.setup()


def test_init_from_a_bad_source_is_one_clear_error(tmp_path, store_cache):
    base = [*TINY, f"data.cache_dir={store_cache}", "trainer.max_steps=1"]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(b"PK\x03\x04 not the rest of a checkpoint")
    with pytest.raises(ValueError, match="truncated.ckpt: not a readable PyTorch checkpoint"):
        run([*base, f"out_dir={tmp_path / 'a'}", f"init_from={truncated}"])
    # A saved model of another size: the sizes apart and the model group that has the saved ones are named, before
    # the run writes anything (it was a load_state_dict traceback of shapes, after the run folder was made).
    run([*base, f"out_dir={tmp_path / 'small'}", "model=small"])
    with pytest.raises(ValueError) as refused:
        run([*base, f"out_dir={tmp_path / 'b'}", f"init_from={tmp_path / 'small' / 'model'}"])
    assert str(refused.value) == (
        f"init_from={tmp_path / 'small' / 'model'} holds a model with model.d_model=64, model.n_layer=4, "
        "model.d_state=16, and this run's model has model.d_model=16, model.n_layer=2, model.d_state=4: add "
        "model=small to start from it")
    assert not (tmp_path / "b").exists()


class _Draws(Dataset):
    """8 items, each telling the epoch its draw was made for (EpochSeeder sets it)."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor([float(self.epoch), float(index)])


class _Draw(L.LightningDataModule):
    def __init__(self):
        super().__init__()
        self.datasets = {"train": _Draws()}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["train"], batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(torch.zeros(2, 2), batch_size=2)


class _Recorder(L.LightningModule):
    """Records every training batch as (epoch of the draw, trainer epoch, batch index, optimizer step)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, int, int, int]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((int(batch[0, 0]), self.current_epoch, batch_idx, self.global_step))
        return self.layer(batch).sum()

    def validation_step(self, batch, batch_idx) -> None:
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _StopAt(L.Callback):
    """Stops the run after the batch that reaches ``step``, as trainer.max_time's Timer does."""

    def __init__(self, step: int | None):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True


def _fit_parts(out, counts: str, parts: list[tuple[int, int | None]], validate: bool) -> tuple[list, int]:
    """Trains ``parts`` one after the other, each resuming from the last one's last.ckpt: (epochs planned, optimizer
    step to stop at). 4 batches of 2 per epoch, 2 accumulated per step, so 2 steps per epoch."""
    seen, ckpt = [], None
    for epochs, stop_at in parts:
        module = _Recorder()
        limits = {"max_epochs": epochs, "max_steps": -1} if counts == "epochs" else {"max_steps": 2 * epochs}
        trainer = L.Trainer(accelerator="cpu", accumulate_grad_batches=2, num_sanity_val_steps=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
                            limit_val_batches=None if validate else 0, **limits,
                            callbacks=[_StopAt(stop_at), EpochSeeder(), LastCheckpoint(out / "last.ckpt")])
        trainer.fit(module, datamodule=_Draw(), ckpt_path=ckpt)
        seen += module.seen
        ckpt = out / "last.ckpt"
    return seen, trainer.global_step


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("counts, parts", [
    ("epochs", [(1, None), (2, None), (4, None)]),  # a finished run given more epochs, twice
    ("epochs", [(4, 3), (4, 5), (4, None)]),  # stopped mid-epoch (by a time limit), twice
    ("epochs", [(4, 2), (4, None)]),  # stopped on an epoch's last batch
    ("steps", [(1, None), (2, None), (4, None)]),  # more steps, from the end of an epoch
    ("steps", [(4, 3), (4, None)]),  # stopped mid-epoch
])
def test_last_checkpoint_resumes_where_the_run_left_off(tmp_path, counts, parts, validate):
    # Lightning (2.6) restarts from loop counters that differ with where a checkpoint was saved: a resumed run must
    # train the batches, epochs and draws of the uninterrupted run (a Lightning that restarts otherwise fails here).
    uninterrupted, steps = _fit_parts(tmp_path / "whole", counts, [parts[-1]], validate)
    resumed, resumed_steps = _fit_parts(tmp_path / "parts", counts, parts, validate)
    assert steps == resumed_steps == 8
    assert resumed == uninterrupted


def test_last_checkpoint_refuses_a_trainer_counting_epochs_and_steps(tmp_path):
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[LastCheckpoint(tmp_path / "last.ckpt")])
    with pytest.raises(ValueError, match="counts epochs or steps, not both"):
        trainer.fit(_Recorder(), datamodule=_Draw())


def test_lightning_advice_that_does_not_apply_is_filtered() -> None:
    import warnings

    from dna_mamba.lit.runner import quiet_lightning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        # Lightning's text for a short epoch: logging here counts steps across epochs, so nothing is lost.
        warnings.warn("The number of training batches (4) is smaller than the logging interval "
                      "Trainer(log_every_n_steps=10). Set a lower value for log_every_n_steps if you want to see logs "
                      "for the training epoch.", UserWarning, stacklevel=1)
        warnings.warn("The 'val_dataloader' does not have many workers which may be a bottleneck. Consider increasing "
                      "the value of the `num_workers` argument` to `num_workers=15` in the `DataLoader` to improve "
                      "performance.", UserWarning, stacklevel=1)
        warnings.warn("a warning the run should still show", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning the run should still show"]
