"""Output files of the commands and task APIs: checked before any work, written whole or not at all, never over an
input. Also ``--device``, checked before a model is loaded."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by parse_device only, so that --help stays quick
    import torch

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """True when both paths exist and are one file (the same path spelt two ways, a symlink, a hard link)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_output(path: PathLike, label: str | None = None, inputs: Mapping[str, PathLike | None] | None = None) -> Path:
    """Refuse, before any work that a bad path would waste, an output that cannot be written or would replace an input.

    Args:
        path: the file to be written (its folder is made when it is written, by :func:`atomic_output`).
        label: how messages name the output (e.g. ``"--out x.vcf"``); default: the path.
        inputs: what the run reads, as name -> path (e.g. ``{"--fasta": "ref.fa"}``); None values are skipped.

    Raises:
        ValueError: the output is one of ``inputs``.
        IsADirectoryError: the output is a directory.
        NotADirectoryError: its folder would have to be made inside an existing file.
        PermissionError: its folder cannot be written.
    """
    path = Path(path)
    label = label or str(path)
    for name, source in (inputs or {}).items():
        if source is not None and same_file(source, path):
            raise ValueError(f"{label}: is the {name} input {source}; writing it would destroy the input, so choose "
                             "another output file")
    if path.is_dir():
        raise IsADirectoryError(f"{label}: is a directory; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists: mkdir starts there
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{label}: cannot create its folder inside {folder}, which is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{label}: no permission to write in {folder}")
    return path


@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed to ``path`` when the block succeeds.

    An interrupted or failed write leaves ``path`` as it was (absent, or the previous output), never half a file.
    The temporary name ends with ``path``'s name, so writers that go by the suffix (bgzip, tabix, matplotlib's
    format) treat it as the real output; the writer creates it, so it gets the usual permissions, not mkstemp's
    owner-only ones.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{secrets.token_hex(6)}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parse_device(text: str, option: str = "--device") -> torch.device:
    """A device name as a ``torch.device`` this machine has: ``auto`` is cuda where available, else cpu.

    Raises:
        ValueError: not a device name, a device type the models do not run on, or one this machine lacks.
    """
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{option} {text}: not a torch device (use cpu, cuda, cuda:1, mps or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {text}: CUDA is not available on this machine (use cpu or auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"{option} {text}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                             f"(cuda:0 to cuda:{count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"{option} {text}: MPS is not available on this machine (use cpu or auto)")
    elif device.type != "cpu":
        # torch knows more device types (meta, xpu, ...); the models' code paths are for these three.
        raise ValueError(f"{option} {text}: dna_mamba runs on cpu, cuda or mps, not {device.type}")
    return device
