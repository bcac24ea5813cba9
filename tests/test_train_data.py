"""Training data settings (data.*) as users type them, and the permissions of saved models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from dna_mamba.data.splits import Segment
from dna_mamba.data.store import UnknownContigError
from dna_mamba.errors import report_user_errors
from dna_mamba.lit.datamodule import GenomeDataConfig, GenomeDataModule
from dna_mamba.model import DnaMambaConfig, DnaMambaLM, load_pretrained, save_pretrained
from dna_mamba.species import SpeciesHead, load_classifier, save_classifier
from dna_mamba.train import build_configs

TINY_MODEL = DnaMambaConfig(d_model=16, n_layer=2, d_state=4)


def write_fasta(path: Path, records: dict[str, int], seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    path.write_text("".join(f">{name}\n{''.join(rng.choice(list('ACGT'), n))}\n" for name, n in records.items()))
    return str(path)


def data_config(overrides: list[str]) -> GenomeDataConfig:
    """data.* settings as ``python -m dna_mamba.train OVERRIDES`` reads them (Hydra's parsing of ints and lists)."""
    with initialize_config_module(config_module="dna_mamba.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return build_configs(cfg)[1]


def planned(config: GenomeDataConfig, seq_len: int = 64) -> GenomeDataModule:
    data = GenomeDataModule(config, seq_len=seq_len, batch_size=2, progress=False)
    data.prepare_data()
    data.setup()
    return data


@pytest.fixture
def genome(tmp_path: Path) -> str:
    return write_fasta(tmp_path / "genome.fa", {"chr1": 600, "chr2": 500, "chrX": 400})


@pytest.mark.parametrize(("typed", "contigs"), [
    ("data.val_contigs=chr2", ["chr2"]),  # one string is one contig, not four letters
    ("data.val_contigs=[2]", ["2"]),  # Hydra reads 2 as an integer
    ("data.val_contigs=2", ["2"]),
    ("data.val_contigs=[1,chrX]", ["1", "chrX"]),
])
def test_val_contigs_as_typed_on_the_command_line(typed: str, contigs: list[str]) -> None:
    assert data_config(["data.split=contigs", typed]).val_contigs == contigs


def test_integer_contig_names_resolve_like_the_rest_of_the_project(tmp_path: Path, genome: str) -> None:
    config = data_config([f"data.fasta=[{genome}]", f"data.cache_dir={tmp_path / 'cache'}", "data.split=contigs",
                          "data.val_contigs=[2]", "data.test_contigs=x"])
    split = planned(config).split
    assert split.val == [Segment("chr2", 0, 500)] and split.test == [Segment("chrX", 0, 400)]
    assert split.train == [Segment("chr1", 0, 600)]


def test_an_unknown_contig_is_one_line_listing_the_contigs(tmp_path: Path, genome: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = GenomeDataConfig(fasta=[genome], cache_dir=str(tmp_path / "cache"), split="contigs", val_contigs=[9])
    with pytest.raises(UnknownContigError) as info:
        planned(config)
    message = str(info.value)
    assert message.startswith("data.val_contigs: unknown contig '9' in store genome-")
    assert message.endswith("(contigs: 'chr1', 'chr2', 'chrX')")
    with pytest.raises(SystemExit), report_user_errors():
        planned(config)
    assert capsys.readouterr().err.splitlines()[0] == f"error: {message}"


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.val_contigs=[chr2]"], r"^data\.val_contigs is used only with data\.split=contigs, and data\.split is "
                                  r"fraction; add data\.split=contigs \(or drop data\.val_contigs\)$"),
    (["data.split=files", "data.test_contigs=[chr2]", "data.val_fasta=[b.fa]"],
     r"^data\.test_contigs is used only with data\.split=contigs, and data\.split is files"),
    (["data.val_fasta=b.fa"], r"^data\.val_fasta is used only with data\.split=files"),
    (["data.split=contigs"], r"^data\.split=contigs needs data\.val_contigs, e\.g\. 'data\.val_contigs=\[chr20\]'$"),
])
def test_settings_of_another_split_method_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data_config(overrides)


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.val_fraction=0"], r"^data\.val_fraction must be above 0 and below 1 \(.*\), got 0$"),
    (["data.val_fraction=1"], r"^data\.val_fraction must be above 0 and below 1"),
    (["data.val_fraction=-0.1"], r"^data\.val_fraction must be above 0 and below 1"),
    (["data.test_fraction=1"], r"^data\.test_fraction must be in \[0, 1\), got 1$"),
    (["data.val_fraction=0.5", "data.test_fraction=0.5"], r"^data\.val_fraction \+ data\.test_fraction must be below"),
    (["data.val_fraction=abc"], r"^data\.val_fraction must be a number, got 'abc'$"),
])
def test_fractions_are_checked_with_the_settings_named(overrides: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        data_config(overrides)


def test_a_val_fraction_that_holds_out_nothing_is_named(tmp_path: Path) -> None:
    # 1% of a 40-bp contig rounds to no base: validation would have no data.
    fasta = write_fasta(tmp_path / "short.fa", {"a": 40, "b": 30})
    config = GenomeDataConfig(fasta=[fasta], cache_dir=str(tmp_path / "cache"), val_fraction=0.01)
    with pytest.raises(ValueError, match=r"^data\.val_fraction=0\.01 holds out no base of any contig \(the longest "
                                         r"is 40 bp\); raise data\.val_fraction$"):
        planned(config, seq_len=8)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_saved_model_directories_are_readable_like_other_files(tmp_path: Path, umask_022: None) -> None:
    model = DnaMambaLM(TINY_MODEL)
    saved = save_pretrained(model, tmp_path / "run" / "model")
    save_pretrained(model, saved)  # replacing a model keeps the modes too
    assert saved.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in saved.iterdir()} == {0o644}
    assert sorted(p.name for p in saved.parent.iterdir()) == ["model"]
    load_pretrained(saved)

    classifier = save_classifier(model, SpeciesHead(16, 2), ["a", "b"], 64, tmp_path / "species")
    assert classifier.stat().st_mode & 0o777 == 0o755
    assert (classifier / "model").stat().st_mode & 0o777 == 0o755
    assert load_classifier(classifier).classes == ["a", "b"]


def test_save_pretrained_removes_what_a_killed_save_left(tmp_path: Path) -> None:
    left = tmp_path / ".model.tmp-1a2b3c4d"  # older dna_mamba's name, untouched for two days
    left.mkdir()
    os.utime(left, (0, 0))
    save_pretrained(DnaMambaLM(TINY_MODEL), tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
