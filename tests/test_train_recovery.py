"""Runs that stop before their plan (a diverged loss, Ctrl-C, SIGTERM) and resumes that must not go on: what is saved,
what the user is told, and that nothing is written before a launch is accepted."""

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_training as run

from dna_mamba.errors import EXIT_CTRL_C, EXIT_SIGTERM, RunStopped, report_user_errors
from dna_mamba.lit.pretrain import PretrainModule

# One micro-batch per optimizer step, unless a test asks for two; no periodic saves or validations in the way.
TINY = ["model=tiny", "trainer=cpu", "trainer.enable_progress_bar=false", "context=1k", "trainer.tokens_per_step=2048",
        "trainer.micro_batch_tokens=2048", "data.max_val_windows=4", "task.run_baseline=false", "task.export=false",
        "trainer.log_every_n_steps=1", "trainer.val_check_interval=1000", "trainer.checkpoint_every_n_steps=1000",
        "trainer.max_time=null"]


def _checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _finite(checkpoint: dict) -> bool:
    return all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values() if v.is_floating_point())


def _hook(monkeypatch, name: str, action) -> None:
    """Runs ``action(module)`` at the end of every training batch (``on_train_batch_end``), or before every training
    step (``training_step``), of PretrainModule."""
    if name == "training_step":
        step = PretrainModule.training_step

        def training_step(self, batch, batch_idx):
            action(self)
            return step(self, batch, batch_idx)

        monkeypatch.setattr(PretrainModule, "training_step", training_step)
    else:
        # The module's hook runs after the callbacks' (LastCheckpoint has then dealt with the batch).
        monkeypatch.setattr(PretrainModule, name, lambda self, *args: action(self), raising=False)


def test_a_diverged_run_keeps_the_last_good_checkpoint_and_says_how_to_go_on(tmp_path, store_cache, monkeypatch,
                                                                               capsys):
    # The weights turn to NaN once step 3 is done (as a too high rate would make them): the next two steps have
    # non-finite losses, and with optim.max_bad_steps=2 the run stops at step 4 (the first of them counted as a step).
    # Saves are due every step, the best checkpoint's every 2.
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.checkpoint_every_n_steps=1",
            "trainer.val_check_interval=2", "optim.max_bad_steps=2", "optim.warmup_fraction=0"]

    def poison(module) -> None:
        if module.global_step == 3:
            next(module.model.parameters()).data.fill_(float("nan"))

    _hook(monkeypatch, "on_train_batch_end", poison)
    with pytest.raises(SystemExit) as stopped, report_user_errors():
        run([*base, "trainer.max_steps=20"])
    # One line, exit status 1 (it was a RuntimeError's traceback, which said "the last checkpoint is intact").
    assert stopped.value.code == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert capsys.readouterr().err == (
        "error: training diverged: 2 non-finite losses in a row at step 4 (optim.max_bad_steps=2); "
        f"{last} holds step 3, the last good state: add resume=auto to the same command to go on from it with a "
        "lower optim.lr (now 0.008)\n")
    # The skipped step still counts, but no save wrote its weights: last.ckpt is step 3's, and no checkpoint in the
    # folder holds a non-finite weight.
    assert _checkpoint(last)["global_step"] == 3
    for path in (tmp_path / "checkpoints").glob("*.ckpt"):
        assert _finite(_checkpoint(path)), path

    # As the message says: resumed with a lower rate, the run goes on from step 3 at that rate (a resume kept the
    # first launch's rate, whatever optim.lr said).
    monkeypatch.undo()
    out = capsys.readouterr().out
    resumed = run([*base, "trainer.max_steps=6", "optim.lr=0.002", "resume=auto"])
    assert resumed["global_step"] == 6
    assert "note: resuming with optim.lr=0.002 (was 0.008)" in capsys.readouterr().out + out
    saved = _checkpoint(last)
    assert saved["lr_schedulers"][0]["base_lrs"] == [0.002, 0.002]
    assert all(group["initial_lr"] == 0.002 and group["lr"] <= 0.002
               for group in saved["optimizer_states"][0]["param_groups"])
    assert _finite(saved)


def test_a_keyboard_interrupt_saves_the_step_and_exits_130(tmp_path, store_cache, monkeypatch, capsys):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}"]

    def interrupt(module) -> None:
        if module.global_step == 3:
            raise KeyboardInterrupt

    _hook(monkeypatch, "on_train_batch_end", interrupt)
    with pytest.raises(SystemExit) as stopped, report_user_errors():
        run([*base, "trainer.max_steps=20"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert stopped.value.code == EXIT_CTRL_C  # Lightning exited 1, and had saved nothing
    err = capsys.readouterr().err
    assert err == f"stopped by Ctrl-C at step 3; {last} holds step 3: add resume=auto to the same command to go on\n"
    assert _checkpoint(last)["global_step"] == 3

    monkeypatch.undo()
    assert run([*base, "trainer.max_steps=5", "resume=auto"])["global_step"] == 5


def test_ctrl_c_stops_at_the_end_of_the_optimizer_step(tmp_path, store_cache, monkeypatch, capfd):
    # Two micro-batches a step: Ctrl-C comes during step 3's first one, and the run stops once that step is done.
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.tokens_per_step=4096"]
    sent = []

    def ctrl_c(module) -> None:
        if module.global_step == 3 and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    _hook(monkeypatch, "training_step", ctrl_c)
    with pytest.raises(RunStopped) as stopped:
        run([*base, "trainer.max_steps=20"])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert stopped.value.exit_code == EXIT_CTRL_C
    assert str(stopped.value) == f"stopped by Ctrl-C at step 4; {last} holds step 4: add resume=auto to the same " \
                                 "command to go on"
    assert "Ctrl-C: stopping at the end of this optimizer step" in capfd.readouterr().err
    assert _checkpoint(last)["global_step"] == 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is itself again after the run

    monkeypatch.undo()
    assert run([*base, "trainer.max_steps=6", "resume=auto"])["global_step"] == 6


# Sends the process SIGTERM, as a cluster scheduler does, during step 2, then runs `python -m dna_mamba.train`.
SIGTERM_DRIVER = """
import os, signal, sys
from dna_mamba.lit.pretrain import PretrainModule
from dna_mamba.train import main
step = PretrainModule.training_step
def training_step(self, batch, batch_idx):
    if self.global_step == 2 and not getattr(self, "sent", False):
        self.sent = True
        os.kill(os.getpid(), signal.SIGTERM)
    return step(self, batch, batch_idx)
PretrainModule.training_step = training_step
sys.argv[0] = "dna_mamba.train"
main()
"""


def test_sigterm_saves_the_step_and_exits_143(tmp_path, store_cache):
    args = [*TINY, f"out_dir={tmp_path / 'run'}", f"data.cache_dir={store_cache}", "trainer.max_steps=20"]
    result = subprocess.run([sys.executable, "-c", SIGTERM_DRIVER, *args], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert result.returncode == EXIT_SIGTERM, result.stderr  # it was 0, with nothing saved
    assert result.stderr.strip().splitlines()[-1] == (
        f"stopped by SIGTERM at step 3; {last} holds step 3: add resume=auto to the same command to go on")
    assert "Traceback" not in result.stderr
    assert _checkpoint(last)["global_step"] == 3
    assert run([*args[:-1], "trainer.max_steps=5", "resume=auto"])["global_step"] == 5


def test_resume_refuses_another_model_or_context_before_writing_anything(tmp_path, store_cache):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.max_steps=1"]
    run(base)
    record = (tmp_path / "config.yaml").read_bytes()
    last = tmp_path / "checkpoints" / "last.ckpt"
    # Another size: the settings apart are named, and the model group of the run's (it was a traceback of shapes from
    # load_state_dict, after config.yaml had been replaced by the refused launch's).
    with pytest.raises(ValueError) as refused:
        run([*base, "model=small", "trainer.max_steps=2", "resume=auto"])
    assert str(refused.value) == (
        f"{last}: the run's model has model.d_model=16, model.n_layer=2, model.d_state=4, and this launch asks for "
        "model.d_model=64, model.n_layer=4, model.d_state=16; a resume continues the run's model, so launch it with "
        "model=tiny, or give a model of another size its own run (name=...)")
    # Another context: refused too (a resume restores a position in epochs of the run's windows).
    with pytest.raises(ValueError, match=rf"the run trains at context 1,024 \(context.seq_len=1024\), and this launch "
                                         rf"asks for 2,048; a resume keeps the run's context \(context=1k\): .*"
                                         rf"init_from={re.escape(str(last))} and its own name="):
        run([*base, "context=2k", "trainer.max_steps=2", "resume=auto"])
    assert (tmp_path / "config.yaml").read_bytes() == record
    assert _checkpoint(last)["global_step"] == 1


def test_resume_refuses_another_genome_at_the_same_path(tmp_path):
    rng = np.random.default_rng(0)
    genome = tmp_path / "genome.fa"

    def write_genome() -> None:
        genome.write_text(">chr\n" + "".join(rng.choice(list("ACGT"), 12_000)) + "\n")

    write_genome()
    base = [*TINY, "data=fasta", f"data.fasta=[{genome}]", f"data.cache_dir={tmp_path / 'stores'}",
            f"out_dir={tmp_path / 'run'}"]
    run([*base, "trainer.max_steps=1"])
    # Touched, not changed: the run goes on.
    os.utime(genome, ns=(genome.stat().st_atime_ns, genome.stat().st_mtime_ns + 10**9))
    assert run([*base, "trainer.max_steps=2", "resume=auto"])["global_step"] == 2
    # Another genome of the same length at the same path, with the same modification time.
    stat = genome.stat()
    write_genome()
    os.utime(genome, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    record = (tmp_path / "run" / "config.yaml").read_bytes()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError) as refused:
        run([*base, "trainer.max_steps=3", "resume=auto"])
    assert str(refused.value) == (
        f"{last}: the genome file {genome} changed since the run trained on it (the same size, other content); a "
        "resume must read the sequence the run started with: give this run its own name= (or out_dir=), or start "
        f"from those weights with init_from={last}")
    assert (tmp_path / "run" / "config.yaml").read_bytes() == record


def test_an_unreadable_last_checkpoint_is_one_line_saying_what_to_do(tmp_path, store_cache):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.max_steps=1"]
    run(base)
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ValueError) as refused:
        run([*base, "trainer.max_steps=2", "resume=auto"])
    message = str(refused.value)
    assert message.startswith(f"{last}: not a readable checkpoint (truncated or damaged: ")
    assert "resume from another checkpoint with resume=" in message and "or move it away" in message
    assert "\n" not in message


def test_a_plan_of_no_steps_is_refused_before_anything_is_written(tmp_path, store_cache):
    with pytest.raises(ValueError, match=r"trainer.max_steps=0 trains nothing .*trainer.max_steps=1000"):
        run([*TINY, f"out_dir={tmp_path / 'run'}", f"data.cache_dir={store_cache}", "trainer.max_steps=0",
             "task.export=true"])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["final validation", "export"])
def test_ctrl_c_after_training_says_the_checkpoint_holds_the_trained_state(tmp_path, store_cache, monkeypatch, capsys,
                                                                           where):
    base = [*TINY, f"out_dir={tmp_path}", f"data.cache_dir={store_cache}", "trainer.max_steps=2", "task.export=true"]
    if where == "export":
        import dna_mamba.lit.runner as runner

        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(runner, "save_pretrained", interrupted)
    else:
        step = PretrainModule.validation_step

        def validation_step(self, *args):
            if self.trainer.state.fn == "validate":  # the run's own validations are under "fit"
                raise KeyboardInterrupt
            return step(self, *args)

        monkeypatch.setattr(PretrainModule, "validation_step", validation_step)
    with pytest.raises(SystemExit) as stopped, report_user_errors():
        run(base)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert stopped.value.code == EXIT_CTRL_C
    assert capsys.readouterr().err == (
        f"stopped by Ctrl-C after training, in the final evaluation or export; {last} holds the trained state (step "
        f"2): export it with `dna-mamba export {last} --out {tmp_path / 'model'}`\n")
    assert _checkpoint(last)["global_step"] == 2


def test_a_checkpoint_save_removes_the_partial_file_of_a_killed_one(tmp_path):
    from dna_mamba.lit.checkpoint_io import AtomicCheckpointIO
    from dna_mamba.outputs import work_dir_name

    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    code = ("import sys, pathlib; from dna_mamba.outputs import work_dir_name; "
            "work_dir_name(pathlib.Path(sys.argv[1])).write_bytes(b'partial')")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)  # a save killed before its rename
    (partial,) = path.parent.iterdir()
    assert partial.name.startswith(".last.ckpt.tmp-")
    running = work_dir_name(path)  # a save of this (live) process under way: left alone
    running.write_bytes(b"in progress")
    AtomicCheckpointIO().save_checkpoint({"global_step": 7}, path)
    assert {p.name for p in path.parent.iterdir()} == {"last.ckpt", running.name}
    assert torch.load(path, weights_only=True)["global_step"] == 7


def test_a_failed_write_of_the_run_record_keeps_the_old_one_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from pathlib import Path

    from dna_mamba.lit.resume import record_settings

    record_settings(tmp_path, "model: tiny\n")
    write_text = Path.write_text

    def disk_full(self, *args, **kwargs):
        write_text(self, "model: sm")  # half of the new record reaches the disk, then the write fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        record_settings(tmp_path, "model: small\n")
    assert (tmp_path / "config.yaml").read_text() == "model: tiny\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
