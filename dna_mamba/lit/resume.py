"""Resuming a run: which checkpoint, whether it belongs to this run, and metrics that outlive the restart."""

from __future__ import annotations

import csv
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


@dataclass
class ResumePoint:
    """The checkpoint a run continues from, and what it recorded about itself."""

    path: str
    global_step: int
    # The data identity it trained on (GenomeDataConfig.identity(), or a species run's SpeciesDataset.identity()
    # and context); None for checkpoints that recorded none
    data: dict | None


def find_resume_point(resume: str | None, out_dir: Path) -> ResumePoint | None:
    """The checkpoint named by ``resume``: a path, ``"auto"`` (``out_dir/checkpoints/last.ckpt`` if there is one),
    or nothing (``None``, ``""``, ``"none"``, ``"null"``)."""
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
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ValueError(f"{path}: not a readable checkpoint ({str(err).splitlines()[0]})") from None
    data = (ckpt.get("datamodule_hyper_parameters") or {}).get("data")
    return ResumePoint(str(path), int(ckpt.get("global_step", 0)), data)


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
    path = out_dir / "config.yaml"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(settings)
    os.replace(tmp, path)


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
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
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
