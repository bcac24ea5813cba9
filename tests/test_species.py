"""Species classification end to end on CPU: slices of two real bacterial species, prepare → fine-tune → evaluate.

Kept small (tiny model, 128–256 bp windows, a few optimizer steps) so the whole file runs in well under a minute
on two cores; it checks the plumbing and the files a run writes, not accuracy.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from dna_mamba.data.fasta import read_fasta
from dna_mamba.export import export_checkpoint
from dna_mamba.model import load_pretrained
from dna_mamba.species.cli import build_sweep_parser, sweep_main
from dna_mamba.species.model import load_classifier
from dna_mamba.tokenizer import decode, reverse_complement
from dna_mamba.train import build_species_configs, run_from_config

STRAINS = {"E_Coli": ("MG1655-K12", "DH1"), "S_Aureus": ("COL", "N315")}  # (training strain, held-out strain)


@pytest.fixture(scope="module")
def slices(shared_data: Path, tmp_path_factory) -> Path:
    """A manifest over 36 kb of each of four real genomes, cut into two contigs each (plain FASTA)."""
    folder = tmp_path_factory.mktemp("species_slices")
    rows = ["label\tpath\tsplit"]
    for label, strains in STRAINS.items():
        for strain, part in zip(strains, ("train", "test"), strict=True):
            record = next(read_fasta(shared_data / "species" / "bacteria" / label / f"{strain}.fa.gz"))
            seq = decode(record.ids[:36_000])
            (folder / f"{strain}.fa").write_text(f">{strain}_1\n{seq[:20_000]}\n>{strain}_2\n{seq[20_000:]}\n")
            rows.append(f"{label}\t{strain}.fa\t{part}")
    (folder / "species.tsv").write_text("\n".join(rows) + "\n")
    return folder / "species.tsv"


@pytest.fixture(scope="module")
def sweep(slices: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    status = sweep_main([str(slices), "--out", str(out), "--contexts", "128,256", "--model", "tiny", "--epochs", "1",
                         "--steps-per-epoch", "2", "--batch-size", "4", "--micro-batch-tokens", "512", "--lr", "1e-3",
                         "--test-windows-per-class", "8", "--val-windows-per-class", "2", "--kmer", "3,4",
                         "--kmer-train-windows", "32", "--accelerator", "cpu", "--quiet",
                         "--dataset-dir", str(out / "dataset")])
    assert status == 0
    return out


def test_sweep_writes_runs_table_and_plot(sweep: Path) -> None:
    table = (sweep / "sweep.md").read_text()
    assert "| 128 (128) |" in table and "| 256 (256) |" in table and "4-mer acc" in table
    assert "| 8–8 |" in table and "stride" not in table  # non-overlapping test windows by default
    assert (sweep / "sweep.png").stat().st_size > 5000
    rows = json.loads((sweep / "sweep.json").read_text())["rows"]
    assert [r["seq_len"] for r in rows] == [128, 256]
    for context in ("128", "256"):
        run = sweep / f"context_{context}"
        results = json.loads((run / "results.json").read_text())
        assert results["global_step"] == 2 and results["effective_batch"] == 4
        assert results["test_windows_per_class"] == [8, 8] and results["test"]["n_windows"] == 16
        assert results["test_stride"] == int(context)
        assert set(results["test"]["per_class"]) == {"E_Coli", "S_Aureus"}
        assert 0.0 <= results["test"]["accuracy"] <= 1.0 and 0.0 <= results["test"]["macro_f1"] <= 1.0
        assert set(results["kmer"]) == {"3", "4"} and results["kmer"]["4"]["n_windows"] == 16
        assert (run / "confusion.png").stat().st_size > 5000
        assert (run / "checkpoints" / "last.ckpt").is_file()
    # micro-batches of 512 tokens: 4 windows of 128 in one pass, 2 windows of 256 accumulated twice
    assert [r["accumulate_grad_batches"] for r in rows] == [1, 2]


def test_classifier_predicts_both_strands_and_exports(sweep: Path, tmp_path: Path) -> None:
    classifier = load_classifier(sweep / "context_256" / "classifier")
    assert classifier.classes == ["E_Coli", "S_Aureus"] and classifier.context == 256
    tokens = torch.randint(0, 4, (3, 256))
    probs = classifier.predict_proba(tokens)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    # Averaged over strands, so a window and its reverse complement get the same answer.
    torch.testing.assert_close(probs, classifier.predict_proba(reverse_complement(tokens)))
    # dna-mamba export reads the species checkpoint like a pretraining one: the backbone comes out.
    exported = load_pretrained(export_checkpoint(sweep / "context_256" / "checkpoints" / "last.ckpt", tmp_path / "m"))
    for (name, a), b in zip(exported.state_dict().items(), classifier.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def hydra_cfg(overrides: list[str]):
    with initialize_config_module(config_module="dna_mamba.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


TINY = ["task=species", "model=tiny", "trainer=cpu", "context.seq_len=256", "trainer.enable_progress_bar=false",
        "trainer.micro_batch_tokens=1024", "task.epochs=1", "task.steps_per_epoch=2", "task.batch_size=4",
        "task.test_windows_per_class=4", "task.val_windows_per_class=2", "task.run_baseline=false"]


def test_hydra_task_fine_tunes_head_on_frozen_pretrained_backbone(sweep: Path, tmp_path: Path, capsys) -> None:
    init = sweep / "context_128" / "classifier" / "model"
    cfg = hydra_cfg([*TINY, f"task.prepared={sweep / 'dataset'}", f"init_from={init}", "task.freeze_backbone=true",
                     "task.pooling=mean", "task.lr=1e-2", "trainer.max_steps=1", f"out_dir={tmp_path}"])
    results = run_from_config(cfg)
    assert results["seq_len"] == 256 and results["freeze_backbone"] and results["init_from"] == str(init)
    # trainer.max_steps does not cut a species run short (it is counted in epochs), and the run says so.
    assert results["global_step"] == 2
    assert "note: task=species does not use trainer.max_steps=1 (the run is task.epochs x task.steps_per_epoch" in \
        capsys.readouterr().out
    assert (tmp_path / "confusion.png").is_file() and (tmp_path / "results.json").is_file()
    trained, start = load_classifier(tmp_path / "classifier"), load_pretrained(init)
    assert trained.head.pooling == "mean"
    for (name, a), b in zip(trained.model.state_dict().items(), start.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # frozen: the backbone did not move


@pytest.mark.parametrize("clip", [1.0, 0.0])
def test_mixed_precision_with_and_without_gradient_clipping(sweep: Path, tmp_path: Path, clip: float) -> None:
    # trainer=gpu runs bf16-mixed with clipping; Lightning rejects clipping with a fused optimizer there.
    cfg = hydra_cfg([*TINY, f"task.prepared={sweep / 'dataset'}", "trainer.precision=bf16-mixed",
                     f"trainer.gradient_clip_val={clip}", "task.steps_per_epoch=1", "task.export=false",
                     f"out_dir={tmp_path}"])
    assert run_from_config(cfg)["global_step"] == 1


def test_resume_refuses_a_checkpoint_of_other_species_data(sweep: Path, slices: Path, tmp_path: Path) -> None:
    base = [*TINY, "task.steps_per_epoch=1", "task.export=false", f"out_dir={tmp_path / 'run'}"]
    prepared = f"task.prepared={sweep / 'dataset'}"
    assert run_from_config(hydra_cfg([*base, prepared]))["global_step"] == 1
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match=r"other data \(data\.context was 256 and is now 128\): .*init_from="):
        run_from_config(hydra_cfg([*base, prepared, "context.seq_len=128", "resume=auto"]))
    swapped = tmp_path / "swapped.tsv"  # the same genomes, with the held-out strains trained on instead
    swapped.write_text("".join(f"{label}\t{slices.parent / strain}.fa\t{part}\n" for label, strains in STRAINS.items()
                               for strain, part in zip(strains, ("test", "train"), strict=True)))
    manifest = [f"task.dataset_dir={tmp_path / 'data'}", "resume=auto"]
    with pytest.raises(ValueError, match=r"other data \(data\.segments was \w+ and is now \w+\)"):
        run_from_config(hydra_cfg([*base, f"task.manifest={swapped}", *manifest]))
    unmarked = tmp_path / "unmarked.tsv"  # no split column: the last genome of each class is held out, as before
    unmarked.write_text("".join(f"{label}\t{slices.parent / strain}.fa\n" for label, strains in STRAINS.items()
                                for strain in strains))
    with pytest.raises(ValueError, match=r"data\.split was genome and is now region"):
        run_from_config(hydra_cfg([*base, f"task.manifest={unmarked}", "task.split=region", *manifest]))
    assert torch.load(ckpt, weights_only=False)["global_step"] == 1  # refused before anything was written
    # Another manifest of the same genomes and split, prepared into another folder, is the same data: the run goes on.
    assert run_from_config(hydra_cfg([*base, f"task.manifest={unmarked}", "task.epochs=3", *manifest]))[
        "global_step"] == 3
    # A checkpoint of older code records no data and still resumes.
    state = torch.load(ckpt, weights_only=False)
    del state["datamodule_hyper_parameters"]
    torch.save(state, ckpt)
    assert run_from_config(hydra_cfg([*base, prepared, "context.seq_len=128", "task.epochs=5", "resume=auto"]))[
        "global_step"] == 5


def test_a_run_resumed_mid_epoch_trains_on_the_windows_of_the_uninterrupted_run(sweep: Path, tmp_path: Path,
                                                                                 monkeypatch) -> None:
    from dna_mamba.errors import RunStopped
    from dna_mamba.lit.species import SpeciesModule

    base = [*TINY, f"task.prepared={sweep / 'dataset'}", "task.export=false", "task.steps_per_epoch=4",
            "task.epochs=2"]
    seen = []
    step = SpeciesModule.training_step

    def recorded(self, batch, batch_idx):
        seen.append((self.current_epoch, batch_idx, hash(batch[0].numpy().tobytes()), tuple(batch[1].tolist())))
        return step(self, batch, batch_idx)

    monkeypatch.setattr(SpeciesModule, "training_step", recorded)
    run_from_config(hydra_cfg([*base, f"out_dir={tmp_path / 'whole'}"]))
    whole, seen[:] = list(seen), []
    assert len(whole) == 8 and len({batch for _, _, batch, _ in whole}) == 8

    def interrupt(self, *args) -> None:
        if self.global_step == 6:  # epoch 1, after its second batch
            raise KeyboardInterrupt

    monkeypatch.setattr(SpeciesModule, "on_train_batch_end", interrupt, raising=False)
    with pytest.raises(RunStopped):
        run_from_config(hydra_cfg([*base, f"out_dir={tmp_path / 'parts'}"]))
    monkeypatch.setattr(SpeciesModule, "on_train_batch_end", lambda self, *args: None, raising=False)
    run_from_config(hydra_cfg([*base, f"out_dir={tmp_path / 'parts'}", "resume=auto"]))
    assert seen == whole


def test_resume_trains_exactly_the_remaining_epochs(sweep: Path, tmp_path: Path) -> None:
    # A finished run given more epochs trains each of them once. (Lightning 2.6 restarts from the end of an epoch
    # with the next epoch already spent when the trainer counts steps too: 1 epoch, then 3, ended at 4 of 6 steps.)
    base = [*TINY, f"task.prepared={sweep / 'dataset'}", "task.export=false", "trainer.log_every_n_steps=1",
            f"out_dir={tmp_path}"]
    assert run_from_config(hydra_cfg(base))["global_step"] == 2
    resumed = run_from_config(hydra_cfg([*base, "task.epochs=3", "resume=auto"]))
    assert resumed["global_step"] == resumed["planned_steps"] == 6 and resumed["stopped_early"] is None
    assert run_from_config(hydra_cfg([*base, "task.epochs=4", "resume=auto"]))["global_step"] == 8
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
    with open(tmp_path / "logs" / "metrics.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["train/loss"]]
    # Every step once, in its epoch: each epoch draws its own training windows (EpochSeeder).
    assert [(int(row["step"]), int(row["epoch"])) for row in rows] == [(step, step // 2) for step in range(8)]


def test_new_run_into_a_folder_holding_a_run_is_refused_before_any_data_work(sweep: Path, slices: Path,
                                                                              tmp_path: Path) -> None:
    base = [*TINY, "task.steps_per_epoch=1", "task.export=false", f"out_dir={tmp_path / 'run'}"]
    run_from_config(hydra_cfg([*base, f"task.prepared={sweep / 'dataset'}"]))
    ckpt, results = tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "run" / "results.json"
    kept = ckpt.read_bytes(), results.read_bytes()
    # Another manifest that would need preparing: the refusal comes first, so nothing is prepared.
    with pytest.raises(ValueError, match=r"already holds a run .*resume=auto.*name="):
        run_from_config(hydra_cfg([*base, f"task.manifest={slices}", f"task.dataset_dir={tmp_path / 'data'}"]))
    assert not (tmp_path / "data").exists()
    assert (ckpt.read_bytes(), results.read_bytes()) == kept
    # resume=auto continues it.
    resumed = run_from_config(hydra_cfg([*base, f"task.prepared={sweep / 'dataset'}", "task.epochs=2", "resume=auto"]))
    assert resumed["global_step"] == 2


def test_species_configs_compose_and_build() -> None:
    for overrides in (["task=species", "task.manifest=x.tsv"], ["experiment=species_bacteria"],
                      ["experiment=species_drosophila"]):
        task, model, optim, trainer, seq_len, micro = build_species_configs(hydra_cfg(overrides))
        assert task.lr == 1e-4 and task.epochs == 10 and task.steps_per_epoch == 1024 and task.batch_size == 64
        assert seq_len in (16384, 32768, 1024) and micro > 0
    task, *_ = build_species_configs(hydra_cfg(["experiment=species_drosophila"]))
    assert task.manifest == "drosophila_chr4" and task.split == "region"


def test_context_longer_than_a_class_fails_before_training(slices: Path, tmp_path: Path) -> None:
    # A class whose genomes are all shorter than the 256-bp context (two genomes, not copies of one: those are refused).
    for name, unit in (("short_a", "ACGT"), ("short_b", "AGCT")):
        (tmp_path / f"{name}.fa").write_text(f">{name}_1\n" + unit * 50 + f"\n>{name}_2\n" + unit[::-1] * 30 + "\n")
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"E_Coli\t{slices.parent / 'MG1655-K12.fa'}\nE_Coli\t{slices.parent / 'DH1.fa'}\n"
                        "shorty\tshort_a.fa\nshorty\tshort_b.fa\n")
    cfg = hydra_cfg([*TINY, f"task.manifest={manifest}", f"task.dataset_dir={tmp_path / 'data'}",
                     f"out_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="class 'shorty': no training sequence is as long as the 256-bp context"):
        run_from_config(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="task.manifest is required"):
        run_from_config(hydra_cfg([*TINY, f"out_dir={tmp_path}"]))


def test_eval_windows_are_fixed_and_balanced(sweep: Path) -> None:
    from dna_mamba.species.dataset import SpeciesDataset

    data = SpeciesDataset.open(sweep / "dataset")
    a, b = data.eval_windows("test", 256, per_class=8), data.eval_windows("test", 256, per_class=8)
    assert np.array_equal(a.start, b.start) and a.per_class(2) == [8, 8]
    held_out = {g for g, genome in enumerate(data.genomes) if genome.segments["test"]}
    assert set(a.genome.tolist()) == held_out  # held-out strains only


def test_test_stride_setting_is_bases_or_a_fraction_of_the_context() -> None:
    from dna_mamba.lit.species import SpeciesTaskConfig

    assert SpeciesTaskConfig().test_stride is None and SpeciesTaskConfig().test_stride_at(32768) is None
    for value, normal, at_32k, at_100 in ((8192, 8192, 8192, 8192), ("8k", 8192, 8192, 8192),
                                          ("2/8", "1/4", 8192, 25), ("1/1", "1/1", 32768, 100)):
        task = SpeciesTaskConfig(test_stride=value)
        assert task.test_stride == normal
        assert (task.test_stride_at(32768), task.test_stride_at(100)) == (at_32k, at_100)
    assert SpeciesTaskConfig(test_stride="1/1000").test_stride_at(128) == 1
    for bad in (0, -5, "0", "0/4", "5/4", "1/0", "quarter", 0.25, True):
        with pytest.raises(ValueError, match=re.escape(f"task.test_stride must be a number of bases (8192, 8k), a "
                                                       f"fraction of the context from 0 to 1 (1/4) or null, got "
                                                       f"{bad!r}")):
            SpeciesTaskConfig(test_stride=bad)


def test_sweep_test_stride_gives_overlapping_windows_and_records_them(sweep: Path, tmp_path: Path) -> None:
    from dna_mamba.species.dataset import SpeciesDataset

    out = tmp_path / "kmer"
    assert sweep_main([str(sweep / "dataset"), "--out", str(out), "--contexts", "128,256", "--kmer-only",
                       "--kmer", "3", "--kmer-train-windows", "32", "--test-windows-per-class", "100000",
                       "--test-stride", "1/4", "--quiet"]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert report["settings"]["task"]["test_stride"] == "1/4"
    table = (out / "sweep.md").read_text()
    data = SpeciesDataset.open(sweep / "dataset")
    for row in report["rows"]:
        seq_len = row["seq_len"]
        windows = data.eval_windows("test", seq_len, stride=seq_len // 4)
        tiled = data.eval_windows("test", seq_len).per_class(2)
        assert row["test_stride"] == seq_len // 4
        assert row["test_windows_per_class"] == windows.per_class(2)
        assert all(n > 3 * t for n, t in zip(row["test_windows_per_class"], tiled, strict=True))
        assert row["kmer"]["3"]["n_windows"] == len(windows)
        assert json.loads((out / f"context_{seq_len}" / "results.json").read_text())["test_stride"] == seq_len // 4
        counts = row["test_windows_per_class"]
        assert f"| {min(counts)}–{max(counts)} (stride {seq_len // 4}) |" in table


def test_hydra_test_stride_overlaps_test_windows_only(sweep: Path, tmp_path: Path) -> None:
    from dna_mamba.species.dataset import SpeciesDataset

    # One step of 64 windows, so that the ~560 test windows are evaluated 64 at a time.
    cfg = hydra_cfg([*TINY, f"task.prepared={sweep / 'dataset'}", "task.test_stride=1/2", "task.steps_per_epoch=1",
                     "task.batch_size=64", "trainer.micro_batch_tokens=16384", "task.test_windows_per_class=100000",
                     "task.val_windows_per_class=100000", "task.export=false", "task.run_baseline=true",
                     "task.kmer_ks=[3]", "task.kmer_train_windows=16", f"out_dir={tmp_path}"])
    results = run_from_config(cfg)
    data = SpeciesDataset.open(sweep / "dataset")
    test = data.eval_windows("test", 256, stride=128)
    assert results["test_stride"] == 128 and results["test_windows_per_class"] == test.per_class(2)
    assert results["test"]["n_windows"] == results["kmer"]["3"]["n_windows"] == len(test)  # the baseline's too
    assert results["val"]["n_windows"] == len(data.eval_windows("val", 256))  # validation does not overlap
    assert json.loads((tmp_path / "results.json").read_text())["test_stride"] == 128


def test_test_stride_longer_than_a_context_fails_before_any_run(sweep: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sweep_main([str(sweep / "dataset"), "--out", str(tmp_path / "out"), "--contexts", "256,128", "--kmer-only",
                    "--test-stride", "200", "--quiet"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "--test-stride=200 is longer than the 128 context" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "context_256").exists()


def _species_sweep_join():
    """benchmarks/species_sweep.py's join (a script, not a package module)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "species_sweep.py"
    spec = importlib.util.spec_from_file_location("species_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.join


def test_joining_sweeps_refuses_runs_scored_on_other_windows() -> None:
    join = _species_sweep_join()
    base = {"seq_len": 1024, "split": {"method": "genome"}, "classes": ["a", "b"], "test_windows_per_class": [4, 4]}
    model = dict(base, test={"accuracy": 0.9})
    kmer = dict(base, kmer={"4": {"accuracy": 0.8}})  # a run from before the stride existed: no overlap
    assert join({1024: model}, {1024: kmer})[0]["kmer"] == kmer["kmer"]
    assert join({1024: dict(model, test_stride=1024)}, {1024: kmer})[0]["test"] == model["test"]
    with pytest.raises(ValueError, match="test_stride"):
        join({1024: dict(model, test_stride=256)}, {1024: kmer})
    with pytest.raises(ValueError, match="classes"):
        join({1024: model}, {1024: dict(kmer, classes=["b", "a"])})


def test_memory_settings_checkpoint_blocks_and_refuse_segments(monkeypatch) -> None:
    from dna_mamba.lit.runner import TrainerConfig
    from dna_mamba.lit.species import SpeciesModule
    from dna_mamba.lit.species_run import apply_memory_settings
    from dna_mamba.model import DnaMambaConfig, fused_block

    monkeypatch.setattr(fused_block, "PIECE_TOKENS", fused_block.PIECE_TOKENS)  # restored after
    module = SpeciesModule(DnaMambaConfig(d_model=8, n_layer=1, d_state=4), ["a", "b"])
    apply_memory_settings(module, TrainerConfig(activation_checkpointing=True, piece_tokens=4096), 1024)
    assert module.model.gradient_checkpointing
    assert fused_block.PIECE_TOKENS == 4096
    with pytest.raises(ValueError, match="trainer.piece_tokens must be positive or null, got 0"):
        TrainerConfig(piece_tokens=0)
    apply_memory_settings(module, TrainerConfig(segment_len=4096), seq_len=1024)  # longer than the window: a no-op
    assert not module.model.gradient_checkpointing
    with pytest.raises(ValueError, match="segment_len=256 is not supported by task=species"):
        apply_memory_settings(module, TrainerConfig(segment_len=256), seq_len=1024)


def test_fsdp_is_refused_before_anything_runs(tmp_path: Path) -> None:
    from dna_mamba.lit.runner import TrainerConfig
    from dna_mamba.lit.species_run import run_species

    config = TrainerConfig(strategy="fsdp", out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="trainer=fsdp is not supported by task=species; use trainer=ddp"):
        run_species(None, None, config, seq_len=1024)
    assert not (tmp_path / "run").exists()


KMER_ONLY = ["--kmer-only", "--kmer", "3", "--kmer-train-windows", "16", "--test-windows-per-class", "8", "--quiet"]


def test_sweep_table_keeps_earlier_runs_only_of_the_same_data_and_test_windows(sweep: Path, slices: Path,
                                                                                tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    dataset = str(sweep / "dataset")
    assert sweep_main([dataset, "--out", str(out), "--contexts", "128", *KMER_ONLY]) == 0
    capsys.readouterr()

    def table_contexts() -> list[int]:
        return sorted(row["seq_len"] for row in json.loads((out / "sweep.json").read_text())["rows"])

    # Same data and test windows, another context: one table.
    assert sweep_main([dataset, "--out", str(out), "--contexts", "256", *KMER_ONLY]) == 0
    printed = capsys.readouterr().out
    assert table_contexts() == [128, 256] and "note" not in printed and "| 128 (128) |" in printed
    # Overlapping test windows at 256: the 128 row, scored on tiled windows, is left out with a notice.
    assert sweep_main([dataset, "--out", str(out), "--contexts", "256", "--test-stride", "1/2", *KMER_ONLY]) == 0
    printed = capsys.readouterr().out
    assert table_contexts() == [256] and "| 128 (128) |" not in (out / "sweep.md").read_text()
    assert "leaves out earlier runs in" in printed and "context_128 (test stride 128)" in printed
    assert "replacing the earlier run in" in printed  # context_256 was there already
    # Three classes from the same genomes: the two-class rows are left out, and chance follows the three classes.
    three = tmp_path / "three.tsv"
    three.write_text("".join(f"{label}\t{slices.parent / strain}.fa\n"
                             for label, strain in (("x", "MG1655-K12"), ("y", "DH1"), ("z", "COL"))))
    assert sweep_main([str(three), "--out", str(out), "--contexts", "512", "--split", "region",
                       "--dataset-dir", str(tmp_path / "three"), *KMER_ONLY]) == 0
    printed = capsys.readouterr().out
    assert table_contexts() == [512]
    assert "context_128 (classes E_Coli, S_Aureus)" in printed
    assert "context_256 (classes E_Coli, S_Aureus, test stride 128)" in printed


def test_sweep_into_a_folder_of_other_files_says_so_and_keeps_them(sweep: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    args = [str(sweep / "dataset"), "--out", str(tmp_path), "--contexts", "128", *KMER_ONLY]
    assert sweep_main(args) == 0
    assert f"note: {tmp_path} already holds other files (notes.txt); the sweep writes" in capsys.readouterr().out
    assert sweep_main(args) == 0
    assert "already holds other files" not in capsys.readouterr().out  # a sweep folder by now
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_sweep_identity_compares_models_only_between_model_rows() -> None:
    from dna_mamba.lit.species_run import SweepIdentity

    data = {"classes": ["a", "b"], "genomes": ["a: a.fa", "b: b.fa"], "segments": "x"}
    model = {"init_from": None, "parameters": 1000, "pooling": "last", "freeze_backbone": False, "both_strands": True}
    identity = SweepIdentity(data, "/d", None, model)
    row = {"seq_len": 1024, "classes": ["a", "b"], "data": data, "test_stride": 1024, "test": {"accuracy": 1.0},
           **model}
    assert identity.differences(row) == []
    assert identity.differences(dict(row, parameters=2000)) == ["parameters 2000"]
    assert identity.differences(dict(row, data=dict(data, segments="y"))) == ["other data (segments)"]
    kmer_row = {k: v for k, v in row.items() if k not in ("test", *model)}
    assert identity.differences(kmer_row) == []  # a k-mer-only row has no model to compare
    assert SweepIdentity(data, "/d", None).differences(dict(row, parameters=2000)) == []  # nor a k-mer-only sweep
    # Rows of older code recorded no data identity: the dataset folder stands for it.
    old = {k: v for k, v in row.items() if k != "data"}
    assert identity.differences(dict(old, dataset="/d")) == []
    assert identity.differences(dict(old, dataset="/e")) == ["dataset /e"]
    assert SweepIdentity(data, "/d", "1/4").differences(dict(row, test_stride=256)) == []


def test_rerunning_a_context_replaces_its_tensorboard_logs(sweep: Path, tmp_path: Path, capsys) -> None:
    args = [str(sweep / "dataset"), "--out", str(tmp_path), "--contexts", "128", "--model", "tiny", "--epochs", "1",
            "--steps-per-epoch", "1", "--batch-size", "2", "--test-windows-per-class", "2",
            "--val-windows-per-class", "1", "--no-baseline", "--accelerator", "cpu", "--quiet"]
    logs = tmp_path / "context_128" / "tensorboard"
    assert sweep_main(args) == 0
    first = {p.name for p in logs.glob("events.out.tfevents.*")}
    (logs / "notes.txt").write_text("mine")
    assert first and sweep_main(args) == 0
    second = {p.name for p in logs.glob("events.out.tfevents.*")}
    assert second and not second & first  # only the new run's curves
    assert (logs / "notes.txt").read_text() == "mine"
    assert f"note: replacing the earlier run in {tmp_path / 'context_128'}" in capsys.readouterr().out
    assert "its earlier run is replaced" in " ".join(build_sweep_parser().format_help().split())


def test_a_sweep_stopped_by_ctrl_c_saves_the_run_and_says_how_to_finish(sweep: Path, tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    from dna_mamba.errors import EXIT_CTRL_C
    from dna_mamba.lit.species import SpeciesModule

    def interrupt(self, *args) -> None:
        if self.trainer.datamodule.seq_len == 256 and self.global_step == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(SpeciesModule, "on_train_batch_end", interrupt, raising=False)
    with pytest.raises(SystemExit) as stopped:
        sweep_main([str(sweep / "dataset"), "--out", str(tmp_path), "--contexts", "128,256,512", "--model", "tiny",
                    "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2", "--test-windows-per-class", "2",
                    "--val-windows-per-class", "1", "--no-baseline", "--accelerator", "cpu", "--quiet"])
    assert stopped.value.code == EXIT_CTRL_C
    assert capsys.readouterr().err == (
        f"stopped by Ctrl-C at step 1 (context 256); context 128 is done and in {tmp_path / 'sweep.md'}; to "
        "finish, run the same command with --contexts 256,512 (its context runs start again)\n")
    assert json.loads((tmp_path / "context_128" / "results.json").read_text())["seq_len"] == 128
    saved = torch.load(tmp_path / "context_256" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 1
    assert not (tmp_path / "context_512").exists()


def test_kmer_only_sweep_does_not_replace_a_model_run(sweep: Path, tmp_path: Path, capsys) -> None:
    model = [str(sweep / "dataset"), "--out", str(tmp_path), "--contexts", "128", "--model", "tiny", "--epochs", "1",
             "--steps-per-epoch", "1", "--batch-size", "2", "--test-windows-per-class", "2",
             "--val-windows-per-class", "1", "--no-baseline", "--accelerator", "cpu", "--quiet"]
    assert sweep_main(model) == 0
    results = (tmp_path / "context_128" / "results.json").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        sweep_main([str(sweep / "dataset"), "--out", str(tmp_path), "--contexts", "256,128", *KMER_ONLY])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"{tmp_path}: context_128 holds a model run, whose results a k-mer-only sweep would replace" in err
    assert (tmp_path / "context_128" / "results.json").read_text() == results
    assert not (tmp_path / "context_256").exists()  # refused before any context ran
    # A k-mer-only run is replaced by another, as before.
    assert sweep_main([str(sweep / "dataset"), "--out", str(tmp_path / "kmer"), "--contexts", "128", *KMER_ONLY]) == 0
    assert sweep_main([str(sweep / "dataset"), "--out", str(tmp_path / "kmer"), "--contexts", "128", *KMER_ONLY]) == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "AFILE"], "--out AFILE: is a file; the sweep writes a folder"),
    (["--max-time-per-context", "5min"], "--max-time-per-context '5min' is not a duration DD:HH:MM:SS"),
    (["--micro-batch-tokens", "0"], "--micro-batch-tokens must be positive, got 0"),
    (["--contexts", "1k,2k,1k"], "--contexts '1k,2k,1k' lists 1k more than once"),
    (["--contexts", "4,1k", "--kmer", "4,6"], "--contexts '4,1k': 4 is shorter than the largest k-mer size of the "
                                              "baseline (6)"),
    (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--kmer", "3,9"], "--kmer must lie in 1..8, got [9]"),
    (["--kmer-train-windows", "0"], "--kmer-train-windows must be positive, got 0"),
    (["--test-stride", "2k"], "--test-stride=2048 is longer than the 1k context"),
    (["--test-stride", "quarter"], "--test-stride must be a number of bases"),
])
def test_sweep_settings_are_refused_in_flag_terms_before_any_data_work(slices: Path, tmp_path: Path, capsys,
                                                                       args: list[str], message: str) -> None:
    (tmp_path / "afile").write_text("mine")
    args = [a.replace("AFILE", str(tmp_path / "afile")) for a in args]
    message = message.replace("AFILE", str(tmp_path / "afile"))
    with pytest.raises(SystemExit) as exit_info:
        sweep_main([str(slices), "--out", str(tmp_path / "out"), "--contexts", "1k", "--dataset-dir",
                    str(tmp_path / "data"), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and f"error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize(("args", "message"), [
    (["--accelerator", "tpu"], "argument --accelerator: invalid choice: 'tpu'"),
    (["--kmer-only", "--no-baseline"], "argument --no-baseline: not allowed with argument --kmer-only"),
])
def test_sweep_option_values_it_cannot_run_are_usage_errors(tmp_path: Path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sweep_main([str(tmp_path / "m.tsv"), "--out", str(tmp_path / "out"), *args])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_time_limits_take_lightnings_forms() -> None:
    from datetime import timedelta

    from dna_mamba.lit.species_run import check_max_time

    for value in (None, "00:02:30:00", "10:00:00:05", " 1:00:00:00", timedelta(hours=1), {"minutes": 5}):
        check_max_time(value)
    for value in ("5min", "02:30:00", "00:2:30:00", ""):
        with pytest.raises(ValueError, match=re.escape(f"trainer.max_time {value!r} is not a duration DD:HH:MM:SS")):
            check_max_time(value)


def test_batch_is_exactly_the_windows_asked_for() -> None:
    from dna_mamba.lit.species import SpeciesTaskConfig
    from dna_mamba.lit.species_run import SpeciesBatchPlan

    task = SpeciesTaskConfig(batch_size=10, micro_batch_size=4)
    with pytest.raises(ValueError, match=re.escape("task.batch_size=10 is not a whole number of micro-batches of "
                                                   "task.micro_batch_size=4: choose a micro-batch size that divides "
                                                   "10 (1, 2, 5, 10) or a batch size that is a multiple of 4 (8 or "
                                                   "12)")):
        SpeciesBatchPlan.from_task(task, 1024, None)
    with pytest.raises(ValueError, match=r"task.batch_size=10 windows cannot be shared evenly by 4 devices; choose a "
                                         r"multiple of 4 \(8 or 12\)"):
        SpeciesBatchPlan.from_task(SpeciesTaskConfig(batch_size=10), 1024, 1 << 20, devices=4)
    # From micro_batch_tokens: the most windows that fit (4 here) and divide the batch.
    plan = SpeciesBatchPlan.from_task(SpeciesTaskConfig(batch_size=10), 1024, 4096)
    assert (plan.micro_batch_size, plan.accumulate_grad_batches, plan.effective_batch) == (2, 5, 10)
    plan = SpeciesBatchPlan.from_task(SpeciesTaskConfig(batch_size=64), 1024, 1 << 20, devices=2)
    assert (plan.micro_batch_size, plan.accumulate_grad_batches, plan.effective_batch) == (32, 1, 64)
    with pytest.raises(ValueError, match="trainer.micro_batch_tokens must be positive, got 0"):
        SpeciesBatchPlan.from_task(SpeciesTaskConfig(), 1024, 0)


def test_baseline_without_k_mer_sizes_is_refused_as_on_the_command_line() -> None:
    from dna_mamba.lit.species import SpeciesTaskConfig

    with pytest.raises(ValueError, match=r"task.kmer_ks lists no k-mer size .*set task.run_baseline=false"):
        SpeciesTaskConfig(kmer_ks=[])
    assert SpeciesTaskConfig(kmer_ks=[], run_baseline=False).kmer_ks == []


def test_trainer_settings_a_species_run_does_not_use_get_a_notice_unless_preset() -> None:
    from omegaconf import OmegaConf

    from dna_mamba.lit.species_run import unused_trainer_settings

    def unused(overrides: list[str]) -> list[str]:
        cfg = hydra_cfg(["task=species", "task.manifest=x.tsv", *overrides])
        trainer = build_species_configs(cfg)[3]
        return [s.split(" ")[0] for s in unused_trainer_settings(trainer, OmegaConf.to_yaml(cfg, resolve=True))]

    assert unused([]) == [] and unused(["trainer=gpu"]) == []  # the presets' own values: 350 and 10000 steps
    assert unused(["trainer.max_steps=1", "trainer.checkpoint_every_n_steps=7"]) == [
        "trainer.max_steps=1", "trainer.checkpoint_every_n_steps=7"]
    assert unused(["trainer=gpu", "trainer.val_check_interval=100"]) == ["trainer.val_check_interval=100"]


def test_kmer_baseline_shows_progress_unless_quiet(sweep: Path, capsys) -> None:
    from dna_mamba.species.dataset import BalancedWindowDataset, EvalWindowDataset, SpeciesDataset
    from dna_mamba.species.kmer import kmer_baseline

    data = SpeciesDataset.open(sweep / "dataset")
    train = BalancedWindowDataset(data, 128, num_samples=8)
    test = EvalWindowDataset(data, data.eval_windows("test", 128, per_class=4))
    kmer_baseline(train, test, data.classes, ks=[2, 3], progress=False)
    assert capsys.readouterr().err == ""
    kmer_baseline(train, test, data.classes, ks=[2, 3], progress=True)
    err = capsys.readouterr().err
    assert "k-mer features (128 bp): 100%" in err and "16/16" in err and "k-mer logistic regression: 100%" in err


def _fail_half_way(path: Path, content: bytes) -> None:
    """What a crash or a full disk leaves: part of the file, then an error."""
    Path(path).write_bytes(content[: len(content) // 2])
    raise OSError("No space left on device")


def test_sweep_report_files_are_replaced_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.figure

    from dna_mamba.lit.species_run import write_sweep_report
    from dna_mamba.species.metrics import plot_confusion

    row = {"seq_len": 1024, "kmer": {"3": {"accuracy": 0.75}}, "test_windows_per_class": [4, 4]}
    write_sweep_report([row], [3], tmp_path, num_classes=2)
    plot_confusion(np.array([[3, 1], [0, 4]]), ["a", "b"], tmp_path / "confusion.png")
    kept = {name: (tmp_path / name).read_bytes() for name in ("sweep.md", "sweep.png", "confusion.png")}
    monkeypatch.setattr(Path, "write_text", lambda self, text, *a, **k: _fail_half_way(self, text.encode()))
    with pytest.raises(OSError):
        write_sweep_report([row, dict(row, seq_len=2048)], [3], tmp_path, num_classes=2)
    assert (tmp_path / "sweep.md").read_bytes() == kept["sweep.md"]
    monkeypatch.undo()
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, path, **k: _fail_half_way(path, b"x" * 99))
    with pytest.raises(OSError):
        write_sweep_report([row, dict(row, seq_len=2048)], [3], tmp_path, num_classes=2)
    with pytest.raises(OSError):
        plot_confusion(np.array([[4, 0], [0, 4]]), ["a", "b"], tmp_path / "confusion.png")
    assert [(tmp_path / name).read_bytes() for name in ("sweep.png", "confusion.png")] == [
        kept["sweep.png"], kept["confusion.png"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "sweep.json", "sweep.md", "sweep.png"]


def test_classifier_is_replaced_whole_so_backbone_and_head_stay_a_pair(tmp_path: Path, monkeypatch) -> None:
    import dna_mamba.species.model as species_model
    from dna_mamba.model import DnaMambaConfig, DnaMambaLM
    from dna_mamba.species.model import SpeciesHead, save_classifier

    config = DnaMambaConfig(d_model=8, n_layer=1, d_state=4)
    torch.manual_seed(0)
    first = DnaMambaLM(config), SpeciesHead(8, 2)
    save_classifier(*first, ["a", "b"], 64, tmp_path / "classifier")
    second = DnaMambaLM(config), SpeciesHead(8, 2)
    monkeypatch.setattr(species_model, "save_file", lambda tensors, path: _fail_half_way(Path(path), b"x" * 99))
    with pytest.raises(OSError):
        save_classifier(*second, ["a", "b"], 64, tmp_path / "classifier")
    loaded = load_classifier(tmp_path / "classifier")
    for (name, a), b in zip(loaded.model.state_dict().items(), first[0].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # the old backbone, beside the old head
    torch.testing.assert_close(loaded.head.linear.weight, first[1].linear.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier"]  # no temporary directory left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds notes.txt, so it is not a saved species classifier; refusing"):
        save_classifier(*first, ["a", "b"], 64, tmp_path / "mine")
