"""Shared fixtures. Triton kernels run through the interpreter on machines without a GPU."""

import os
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Must be set before triton is first imported, so kernels launched with backend="triton" interpret on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: the shared data folder must sit next to the repository")
    return SHARED_DATA


@pytest.fixture
def run_fast_notebook(monkeypatch, shared_data):
    """Execute a notebook of ``notebooks/`` in its FAST mode; returns (code-cell outputs, seconds taken).

    The kernel inherits this process's environment, and jupyter_client starts the "python3" kernel with this
    interpreter (sys.executable), so it sees the same installed dna_mamba.
    """

    def run(name: str) -> tuple[list[dict], float]:
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        monkeypatch.setenv("DNA_MAMBA_NOTEBOOK_FAST", "1")
        monkeypatch.setenv("DNA_MAMBA_SHARED_DATA", str(shared_data))
        monkeypatch.delenv("DNA_MAMBA_MODEL", raising=False)
        path = REPO / "notebooks" / name
        notebook = nbformat.read(path, as_version=4)
        client = nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        started = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - started
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
        return outputs, elapsed

    return run


def run_training(overrides: list[str]) -> dict:
    """``python -m dna_mamba.train OVERRIDES`` in this process (Hydra composes the shipped configs); the summary."""
    from hydra import compose, initialize_config_module

    from dna_mamba.train import run_from_config

    with initialize_config_module(config_module="dna_mamba.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return run_from_config(cfg)


@pytest.fixture(scope="session")
def store_cache(tmp_path_factory) -> str:
    """One token-store cache for the training tests: the embedded genome is prepared once."""
    return str(tmp_path_factory.mktemp("stores"))
