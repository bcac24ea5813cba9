"""Atomic checkpoint writes: a crash during a save never corrupts the last good checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dna_mamba.outputs import remove_stale_work_dirs, work_dir_name


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes to a temporary file in the same directory, fsyncs, then renames over the target; removes the temporary
    files of earlier saves whose process is gone."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        fs = get_filesystem(path)
        if fs.protocol not in ("file", ("file", "local")) and "file" not in fs.protocol:
            super().save_checkpoint(checkpoint, path, storage_options)  # remote filesystems: no rename semantics
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work_dirs(path)  # the partial file of a save that was killed (SIGKILL, power loss) part-way
        tmp = work_dir_name(path)
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
