"""Shared fixtures. Triton kernels run through the interpreter on machines without a GPU."""

import os
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
