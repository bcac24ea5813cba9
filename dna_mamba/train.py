"""Hydra entry point for pretraining and species classification (``task=species``): ``python -m dna_mamba.train``.

Hydra lives here and in ``cli.py`` only; everything below ``run_from_config`` takes plain dataclasses.
Errors the user can fix (a missing file, a malformed FASTA, a bad setting) print one line and exit 1;
``--debug``, ``debug=true`` or ``HYDRA_FULL_ERROR=1`` show the full traceback instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from dna_mamba.errors import report_user_errors

CONFIG_PATH = "pkg://dna_mamba.conf"


def backbone_label(model_name: str, init_from: str | None) -> str:
    """The backbone part of a default run name: the model group, or, when the run starts from a saved model,
    ``from_`` and the run that saved it (``runs/x/model`` and ``runs/x/checkpoints/last.ckpt`` are both run ``x``).

    The saved model fixes the sizes: a species run takes them from it, and pretraining refuses a model group of other
    sizes, naming the group that matches (``model=...``)."""
    if not init_from:
        return model_name
    path = Path(init_from)
    if path.suffix == ".ckpt" and path.parent.name == "checkpoints":
        label = path.parent.parent.name
    elif path.name == "model":
        label = path.parent.name
    else:
        label = path.stem
    return f"from_{label or 'saved_model'}"


# The configs' default run names use it: ${dna_mamba.backbone:${model.name},${init_from}}.
OmegaConf.register_new_resolver("dna_mamba.backbone", backbone_label, replace=True)


def build_configs(cfg: DictConfig):
    """Dataclass configs of the library from a composed Hydra config."""
    from dna_mamba.lit.datamodule import GenomeDataConfig
    from dna_mamba.lit.pretrain import OptimConfig
    from dna_mamba.lit.runner import BatchPlan, TrainerConfig
    from dna_mamba.model import DnaMambaConfig

    model, data, trainer, optim = (_plain(cfg, key) for key in ("model", "data", "trainer", "optim"))
    tokens_per_step = trainer.pop("tokens_per_step")
    micro_batch_tokens = trainer.pop("micro_batch_tokens")
    devices = trainer.get("devices", 1)
    n_devices = devices if isinstance(devices, int) and devices > 0 else _visible_devices(trainer["accelerator"])
    plan = BatchPlan(seq_len=int(cfg.context.seq_len), tokens_per_step=tokens_per_step,
                     micro_batch_tokens=micro_batch_tokens, devices=n_devices)
    return (
        DnaMambaConfig(**model),
        GenomeDataConfig(**data, seed=int(cfg.seed)),
        OptimConfig(**optim),
        TrainerConfig(out_dir=str(cfg.out_dir), **trainer),
        plan,
    )


def build_species_configs(cfg: DictConfig):
    """Dataclass configs of a ``task=species`` run: task, model, optim, trainer, context, micro-batch tokens."""
    from dna_mamba.lit.pretrain import OptimConfig
    from dna_mamba.lit.runner import TrainerConfig
    from dna_mamba.lit.species import SpeciesTaskConfig
    from dna_mamba.model import DnaMambaConfig

    # task.manifest may stay ??? when task.prepared names a prepared dataset; run_species says if neither is set.
    task = OmegaConf.to_container(cfg.task, resolve=True, throw_on_missing=False)
    task.pop("name")
    task["manifest"] = None if task.get("manifest") == "???" else task.get("manifest")
    model, trainer, optim = (_plain(cfg, key) for key in ("model", "trainer", "optim"))
    trainer.pop("tokens_per_step")  # the species batch is counted in windows (task.batch_size)
    micro_batch_tokens = trainer.pop("micro_batch_tokens")
    return (SpeciesTaskConfig(**task), DnaMambaConfig(**model), OptimConfig(**optim),
            TrainerConfig(out_dir=str(cfg.out_dir), **trainer), int(cfg.context.seq_len), micro_batch_tokens)


def _plain(cfg: DictConfig, key: str) -> dict:
    """A config group as a plain dict without its ``name``; a required value left as ??? is a user error."""
    try:
        values = OmegaConf.to_container(cfg[key], resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        raise ValueError(f"{err.full_key} is required, e.g. '{err.full_key}=[path/to/genome.fa.gz]'") from None
    values.pop("name", None)
    return values


def _visible_devices(accelerator: str) -> int:
    import torch

    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1


def run_from_config(cfg: DictConfig) -> dict:
    # Recorded as out_dir/config.yaml by the run itself, once it is accepted (Hydra's own .hydra/ record is off:
    # Hydra writes it before the run starts, so a refused launch would overwrite the record of the run it protects).
    settings = OmegaConf.to_yaml(cfg, resolve=True)
    if cfg.task.name == "species":
        from dna_mamba.lit.species_run import run_species

        task, model, optim, trainer, seq_len, micro_batch_tokens = build_species_configs(cfg)
        return run_species(task, model, trainer, seq_len, micro_batch_tokens=micro_batch_tokens, optim=optim,
                           seed=int(cfg.seed), init_from=cfg.init_from, resume=cfg.resume, settings=settings)
    from dna_mamba.lit.runner import run_pretraining

    model, data, optim, trainer, plan = build_configs(cfg)
    if cfg.task.name != "pretrain":
        raise ValueError(f"task={cfg.task.name} is not run by dna_mamba.train yet")
    return run_pretraining(
        model, data, optim, trainer, plan,
        seed=int(cfg.seed), resume=cfg.resume, init_from=cfg.init_from,
        run_baseline=bool(cfg.task.run_baseline), export=bool(cfg.task.export), settings=settings,
    )


@hydra.main(config_path=CONFIG_PATH, config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        with report_user_errors(debug=bool(cfg.get("debug", False))):
            run_from_config(cfg)
    finally:
        # Hydra makes the run's folder before the run starts; a launch refused before writing anything leaves none.
        with contextlib.suppress(OSError):  # not empty: a run is (or was) in it
            os.rmdir(HydraConfig.get().runtime.output_dir)


def main() -> None:
    # "--debug" is not a Hydra override: strip it and ask for full tracebacks instead.
    if "--debug" in sys.argv[1:]:
        sys.argv = [a for a in sys.argv if a != "--debug"]
        os.environ["HYDRA_FULL_ERROR"] = "1"
    _hydra_main()


if __name__ == "__main__":
    main()
