"""Every Hydra option composes and builds the library's dataclasses; unknown options fail clearly."""

import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from dna_mamba.model import DnaMambaLM
from dna_mamba.train import build_configs, build_species_configs


def options(group: str) -> list[str]:
    folder = resources.files("dna_mamba.conf") / group
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def composed(overrides: list[str]):
    with initialize_config_module(config_module="dna_mamba.conf", version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_context_group_is_exact_powers_of_two():
    sizes = {}
    for name in options("context"):
        cfg = composed([f"context={name}"])
        sizes[name] = cfg.context.seq_len
    assert sorted(sizes.values()) == [2**k for k in range(10, 21)]
    assert sizes["1k"] == 1024 and sizes["1m"] == 1_048_576


@pytest.mark.parametrize("trainer", options("trainer"))
def test_tokens_per_step_constant_across_contexts(trainer):
    per_step = set()
    for context in options("context"):
        cfg = composed([f"context={context}", f"trainer={trainer}", "trainer.devices=1"])
        *_, plan = build_configs(cfg)
        per_step.add(plan.effective_tokens_per_step)
        assert plan.batch_size * plan.seq_len * plan.accumulate_grad_batches == plan.effective_tokens_per_step
    # Constant, except that a context longer than the target must still hold one whole sequence.
    target = cfg.trainer.tokens_per_step
    assert {t for t in per_step if t <= target} == {target}


@pytest.mark.parametrize("model", options("model"))
def test_every_model_option_instantiates(model):
    model_cfg, *_ = build_configs(composed([f"model={model}"]))
    with torch.device("meta"):  # sizes only: no memory for the 40.7M model's weights
        lm = DnaMambaLM(model_cfg)
    assert lm.num_parameters() > 0


@pytest.mark.parametrize("group", ["data", "trainer", "task", "experiment"])
def test_every_option_composes(group):
    for name in options(group):
        overrides = [f"{group}={name}"]
        if group == "data" and name != "ecoli" or group == "experiment":
            overrides.append("data.fasta=[some.fa]")  # presets that take a path need one to build
        cfg = composed(overrides)
        model, data, optim, trainer, plan = build_configs(cfg)
        assert plan.seq_len == cfg.context.seq_len
        assert data.fasta


@pytest.mark.parametrize("init_from, backbone", [
    (None, "1.4m"),
    ("runs/ecoli_tiny_1k/model", "from_ecoli_tiny_1k"),
    ("runs/ecoli_tiny_1k/checkpoints/last.ckpt", "from_ecoli_tiny_1k"),
    ("pretrained/human_7m", "from_human_7m"),
])
def test_default_run_names_say_which_backbone_the_run_starts_from(init_from, backbone):
    # With init_from the saved model's sizes replace the model group's, so the name must not claim the group's size.
    overrides = [] if init_from is None else [f"init_from={init_from}"]
    cfg = composed(["experiment=species_bacteria", *overrides])
    assert cfg.name == f"species_bacteria_{backbone}_32k" and cfg.out_dir == f"runs/{cfg.name}"
    assert composed(["model=tiny", *overrides]).name == f"ecoli_{'tiny' if init_from is None else backbone}_1k"


def test_data_presets_requiring_a_path_say_so():
    cfg = composed(["data=human_chr20"])
    with pytest.raises(Exception, match="fasta"):
        build_configs(cfg)


def test_unknown_option_gives_hydra_error():
    result = subprocess.run([sys.executable, "-m", "dna_mamba.train", "model=no_such_model"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "no_such_model" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("experiment", options("experiment"))
def test_trainer_cpu_overrides_every_experiment(experiment):
    # What the error for a GPU setting on a machine without one advises.
    assert composed([f"experiment={experiment}", "trainer=cpu"]).trainer.accelerator == "cpu"


def readme_train_commands() -> list[list[str]]:
    """The overrides of every complete ``python -m dna_mamba.train`` command in the README (continued lines joined)."""
    text = (Path(__file__).parents[1] / "README.md").read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.strip().startswith("python -m dna_mamba.train") and "..." not in line:
            commands.append(shlex.split(line.split("#")[0])[3:])
    return commands


def test_readme_training_commands_compose_and_build():
    commands = readme_train_commands()
    assert len(commands) >= 5
    for overrides in commands:
        cfg = composed(overrides)
        if cfg.task.name == "species":
            build_species_configs(cfg)
        else:
            build_configs(cfg)
