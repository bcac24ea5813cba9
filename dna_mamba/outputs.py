"""Output files of the commands and task APIs: checked before any work, written whole or not at all, never over an
input. Also ``--device``, checked before a model is loaded."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by parse_device only, so that --help stays quick
    import torch

PathLike = str | os.PathLike

# A work directory beside an output is named ``.<output>.<kind>-<pid>@<host>-<random>``: the owner's pid and host
# tell a leftover of a killed process from a build still running (maybe on another machine sharing the folder).
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"
_STALE_AFTER_S = 24 * 3600  # leftovers of another host, or of older dna_mamba without a pid in the name


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


def work_dir_name(target: PathLike, kind: str = "tmp") -> Path:
    """A fresh name beside ``target`` for a directory that builds it (``tmp``) or holds the output it replaces
    (``old``); see :func:`make_work_dir` and :func:`remove_stale_work_dirs`."""
    target = Path(target)
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}@{_HOST}-{secrets.token_hex(4)}")


def make_work_dir(target: PathLike) -> Path:
    """An empty new directory beside ``target`` to build it in, then rename it to ``target``.

    Made by ``mkdir``, so it gets the permissions of any new directory (0o777 less the umask): ``mkdtemp``'s
    owner-only 0o700 would stay on the output after the rename and lock out the group.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = work_dir_name(target, "tmp")
        try:
            path.mkdir()
        except FileExistsError:  # another process drew the same random name
            continue
        return path


def install_work_dir(tmp: PathLike, target: PathLike, keep_concurrent: bool = False) -> None:
    """Put a directory built in ``tmp`` (:func:`make_work_dir`) in place of ``target``, with the modes of new files
    (:func:`apply_umask`). Readers see the old directory or the new one, never a mixture; an existing ``target`` is
    moved aside first (a rename cannot replace a non-empty directory) and put back if the swap fails.

    ``keep_concurrent``: when another process installs ``target`` between the two renames, theirs stands and ``tmp``
    is dropped (a cache that any builder may fill: the genome store). Otherwise that is an error.
    """
    tmp, target = Path(tmp), Path(target)
    apply_umask(tmp)  # some writers make owner-only files (safetensors: 0o600); an output is shared like any other
    try:
        os.replace(tmp, target)  # atomic when target is absent or an empty directory
        return
    except OSError:
        if not target.exists():
            raise
    backup = work_dir_name(target, "old")
    os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except OSError:
        if keep_concurrent and target.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(backup, target)
            raise
    shutil.rmtree(backup, ignore_errors=True)


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``os.umask`` can only set and return)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o077)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def apply_umask(root: PathLike) -> None:
    """Give ``root`` and everything in it the modes of newly made files: 0o777 less the umask for directories,
    0o666 less the umask for files.

    For a tree built in a work directory before its rename: some writers make owner-only files (safetensors writes
    0o600), which would otherwise lock the group out of a finished output.
    """
    umask = current_umask()
    for folder, _, files in os.walk(root):
        _chmod(folder, 0o777 & ~umask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                _chmod(path, 0o666 & ~umask)


def _chmod(path: str, mode: int) -> None:
    with contextlib.suppress(OSError):  # a file system without Unix modes (SMB, some FUSE): the output still counts
        os.chmod(path, mode)


def is_work_dir(path: PathLike) -> bool:
    """Whether ``path`` is named like a work directory of some output (an unfinished build or a replaced output)."""
    return work_dir_target(path) is not None


def work_dir_target(path: PathLike) -> Path | None:
    """The output that a work directory named like ``path`` builds or replaced; None when it is not so named."""
    match = _WORK_NAME.fullmatch(Path(path).name)
    return None if match is None else Path(path).with_name(match["target"])


_WORK_NAME = re.compile(r"\.(?P<target>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)@(?P<host>[^/]+)-)?[0-9A-Za-z_]+")


def remove_stale_work_dirs(target: PathLike) -> list[Path]:
    """Delete the work directories of ``target`` that killed processes left beside it; returns those removed.

    A work directory goes when its owner, a process of this host, is gone, or (owner on another host, or a name
    without an owner) when nothing has changed in it for a day. Work directories of other outputs are never touched.
    """
    target = Path(target)
    removed = []
    try:
        siblings = list(target.parent.iterdir())
    except OSError:  # no folder yet: nothing left behind
        return removed
    for path in siblings:
        match = _WORK_NAME.fullmatch(path.name)
        if match is None or match["target"] != target.name or not _is_stale(path, match):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _is_stale(path: Path, match: re.Match) -> bool:
    if match["pid"] is not None and match["host"] == _HOST:
        return not _process_alive(int(match["pid"]))
    try:
        return time.time() - path.lstat().st_mtime > _STALE_AFTER_S
    except OSError:
        return False


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


@contextlib.contextmanager
def quiet_closed_stdout() -> Iterator[None]:
    """Stop quietly when the reader of stdout goes away (``dna-mamba prepare ... | head``), without a traceback.

    Output is flushed inside the block, so a closed pipe is noticed here rather than at interpreter exit; stdout is
    then pointed at ``/dev/null`` so that exit's own flush does not complain again.
    """
    try:
        try:
            yield
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        with contextlib.suppress(OSError, ValueError):  # stdout without a file descriptor: nothing left to flush
            os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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
