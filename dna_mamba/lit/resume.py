"""Resuming a run: which checkpoint, whether it belongs to this run, and metrics that outlive the restart."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from dna_mamba.data.store import file_fingerprint
from dna_mamba.outputs import atomic_output


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and what it recorded about itself."""

    path: str
    global_step: int
    # The data identity it trained on (GenomeDataConfig.identity(), or a species run's SpeciesDataset.identity()
    # and context); None for checkpoints that recorded none
    data: dict | None
    model: dict | None = None  # the model's DnaMambaConfig.to_dict() (its hyperparameters' model_config)
    run: dict | None = None  # what RunRecord kept (context, genome fingerprint); None for older checkpoints


# Where RunRecord keeps, in every checkpoint, what a resume of a pretraining run must find unchanged.
RUN_RECORD_KEY = "dna_mamba_run"


def find_resume_point(resume: str | None, out_dir: Path) -> ResumePoint | None:
    """The checkpoint named by ``resume``: a path, ``"auto"`` (``out_dir/checkpoints/last.ckpt`` if there is one),
    or nothing (``None``, ``""``, ``"none"``, ``"null"``).

    Raises:
        FileNotFoundError: ``resume`` names a file that does not exist.
        ValueError: the checkpoint cannot be read (a save cut short by a full disk, a damaged copy); the message says
            which other checkpoint to resume from, or to move it away.
    """
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        path = out_dir / "checkpoints" / "last.ckpt"
        if not path.is_file():
            return None
    else:
        path = Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"{resume}: checkpoint to resume from not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoints: plain-dict hparams
        if not isinstance(ckpt, dict):
            raise TypeError(f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    except Exception as err:  # torch.load fails with many types (pickle, zip, EOF, OS errors) for one cause
        raise ValueError(f"{path}: not a readable checkpoint (truncated or damaged: {type(err).__name__}); "
                         f"{_other_checkpoints_advice(path)}") from None
    data = (ckpt.get("datamodule_hyper_parameters") or {}).get("data")
    model = (ckpt.get("hyper_parameters") or {}).get("model_config")
    return ResumePoint(str(path), int(ckpt.get("global_step", 0)), data, model, ckpt.get(RUN_RECORD_KEY))


def _other_checkpoints_advice(path: Path) -> str:
    others = sorted((p for p in path.parent.glob("*.ckpt") if p.name != path.name), key=lambda p: p.stat().st_mtime)
    start_over = "or move it away (resume=auto then starts the run over)"
    if others:
        return f"resume from another checkpoint with resume={others[-1]}, {start_over}"
    return f"resume from another checkpoint with resume=PATH, {start_over}"


def refuse_to_overwrite(out_dir: Path) -> None:
    """A new run (no ``resume``) into a folder that holds another run's checkpoint would overwrite that run's
    checkpoint and model: say how to continue it or where to put the new run instead."""
    existing = out_dir / "checkpoints" / "last.ckpt"
    if existing.is_file():
        raise ValueError(f"{out_dir} already holds a run ({existing}): add resume=auto to continue it, or give this "
                         "run its own name= (or out_dir=); delete the folder to start that run over")


def record_settings(out_dir: Path, settings: str | None) -> None:
    """Write a launch's settings (text: the entry point's composed config) to ``out_dir/config.yaml``.

    Called once the run is accepted (after ``refuse_to_overwrite``), so a refused launch leaves the folder, and the
    record of the run already in it, as they were. A resumed run's launch replaces the record with its own settings.
    """
    if settings is None:
        return
    with atomic_output(out_dir / "config.yaml") as tmp:
        tmp.write_text(settings)


def check_same_data(point: ResumePoint, data: dict) -> None:
    """Refuse to resume a checkpoint that trained on other data: the run would mix two genomes or splits.

    Checkpoints that recorded no data (older runs, other tasks) are not checked.
    """
    if point.data is None or point.data == data:
        return
    changed = "; ".join(f"data.{key} was {point.data.get(key)} and is now {data.get(key)}"
                        for key in sorted(data.keys() | point.data.keys()) if point.data.get(key) != data.get(key))
    raise ValueError(f"{point.path} belongs to a run on other data ({changed}): give this run its own name= (or "
                     f"out_dir=), or start from those weights with init_from={point.path} instead of resume")


def check_same_model(point: ResumePoint, model: dict) -> None:
    """Refuse to resume a checkpoint of another model (``model``: this launch's ``DnaMambaConfig.to_dict()``): its
    weights would not fit, or would run under other settings than they trained with.

    Checkpoints that recorded no model config are not checked.
    """
    if point.model is None or point.model == model:
        return
    keys = model_settings_apart(point.model, model)
    group = config_group_choice("model", point.model)
    relaunch = f"model={group}" if group else model_overrides(point.model, keys, " ")
    raise ValueError(f"{point.path}: the run's model has {model_overrides(point.model, keys)}, and this launch asks "
                     f"for {model_overrides(model, keys)}; a resume continues the run's model, so launch it with "
                     f"{relaunch}, or give a model of another size its own run (name=...)")


def model_settings_apart(a: dict, b: dict, keys: tuple[str, ...] | None = None) -> list[str]:
    """The settings (of ``keys``, default all) in which two model configs (``DnaMambaConfig.to_dict()``) differ. A
    ``dt_rank`` that follows from ``d_model`` on both sides (its default) is left out: setting ``d_model`` gives it."""
    keys = keys or tuple(dict.fromkeys([*a, *b]))  # in the config's own order
    apart = [key for key in keys if a.get(key) != b.get(key)]
    if "dt_rank" in apart and all(c.get("dt_rank") == math.ceil(c.get("d_model", 0) / 16) for c in (a, b)):
        apart.remove("dt_rank")
    return apart


def model_overrides(config: dict, keys: list[str], sep: str = ", ") -> str:
    """``model.d_model=64, model.n_layer=4``: settings of a model config as a user types them."""
    return sep.join(f"model.{key}={config.get(key)}" for key in keys)


def check_same_context(point: ResumePoint, seq_len: int) -> None:
    """Refuse to resume at another context than the run trains at.

    Mamba runs at any length, but a resume also restores the position in the epoch and the schedule, which are
    counted in windows of the run's context: a longer context is a new run that starts from these weights.
    Checkpoints that recorded no context are not checked.
    """
    saved = (point.run or {}).get("seq_len")
    if saved is None or saved == seq_len:
        return
    group = config_group_choice("context", {"seq_len": saved})
    keep = f"context={group}" if group else f"context.seq_len={saved}"
    raise ValueError(f"{point.path}: the run trains at context {saved:,} (context.seq_len={saved}), and this launch "
                     f"asks for {seq_len:,}; a resume keeps the run's context ({keep}): to train at the new context, "
                     f"start a new run from these weights with init_from={point.path} and its own name=")


def genome_fingerprint(paths: list[Path]) -> list[dict]:
    """What tells a genome file's content at little cost, as the token store records it for its sources: the size and
    the sha256 of the first and of the last MiB (a file replaced by another of the same name and size differs there).

    Raises:
        FileNotFoundError: a file is missing.
    """
    fingerprint = []
    for path in paths:
        try:
            size = path.stat().st_size
            head, tail = file_fingerprint(path, size)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: genome file not found") from None
        fingerprint.append({"file": str(path), "size": size, "head_sha256": head, "tail_sha256": tail})
    return fingerprint


def check_same_genome(point: ResumePoint, fingerprint: list[dict]) -> None:
    """Refuse to resume when a genome file at the run's path now holds other sequence (``fingerprint``: this
    launch's :func:`genome_fingerprint`). Checkpoints that recorded no fingerprint are not checked."""
    saved = (point.run or {}).get("genome")
    if saved is None:
        return
    content = [{k: v for k, v in entry.items() if k != "file"} for entry in saved]
    for then, now in zip(content, fingerprint, strict=False):
        if then != {k: v for k, v in now.items() if k != "file"}:
            change = (f"{then['size']:,} bytes then, {now['size']:,} now" if then["size"] != now["size"]
                      else "the same size, other content")
            raise ValueError(f"{point.path}: the genome file {now['file']} changed since the run trained on it "
                             f"({change}); a resume must read the sequence the run started with: give this run its "
                             f"own name= (or out_dir=), or start from those weights with init_from={point.path}")


class RunRecord(L.Callback):
    """Keeps, in every checkpoint, what a resume must find unchanged beyond the data settings (which the datamodule
    records): the context and a fingerprint of the genome files (:func:`genome_fingerprint`), taken when training
    starts, after the data is prepared."""

    def __init__(self, seq_len: int, genome_files: list[Path]):
        self.seq_len = seq_len
        self.genome_files = genome_files
        self._record: dict | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record = {"seq_len": self.seq_len, "genome": genome_fingerprint(self.genome_files)}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._record is not None:
            checkpoint[RUN_RECORD_KEY] = self._record


def config_group_choice(group: str, values: dict) -> str | None:
    """The shipped config of a Hydra group (``conf/<group>/*.yaml``) whose settings ``values`` all has, e.g.
    ``"small"`` for a model of its sizes, so messages can say ``model=small``; None when none matches."""
    folder = resources.files("dna_mamba.conf") / group
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        preset = yaml.safe_load(entry.read_text()) or {}
        name = preset.pop("name", entry.name.removesuffix(".yaml"))
        if preset and all(values.get(key) == value for key, value in preset.items()):
            return str(name)
    return None


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing metrics.csv keeps its rows from before ``resume_step``
    instead of being deleted, so the file covers the whole run; rows from later steps are dropped because the
    resumed run logs those steps again."""

    def __init__(self, log_dir: str, resume_step: int):
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [row for row in reader if int(row.get("step") or 0) < self.resume_step]
        with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = header  # later saves append under this header, or rewrite the file when keys are new


class RunCSVLogger(CSVLogger):
    """CSV metrics in ``out_dir/logs/metrics.csv``; with ``resume_step`` the earlier rows of the run stay."""

    def __init__(self, out_dir: Path, resume_step: int | None = None):
        super().__init__(out_dir, name="logs", version="")
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and self.resume_step is not None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.resume_step)
        return super().experiment
