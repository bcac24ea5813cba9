"""Layout copies (time-contiguous <-> channel-last): the Triton kernel against torch's copy, element for element.

Without a GPU the kernel runs through the Triton interpreter on CPU tensors. Outputs start NaN-filled
(``POISON_OUTPUTS``), so a tile the kernel skips fails the comparison.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from dna_mamba.kernels.layout import interface as layout_interface  # noqa: E402
from dna_mamba.kernels.layout import relayout, relayout_ref  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(layout_interface, "POISON_OUTPUTS", True)


def _source(batch, dim, seqlen, dtype, layout):
    """A (batch, dim, L) tensor of distinct values, stored time-contiguous, channel-last or as a strided view."""
    values = torch.arange(batch * dim * seqlen, dtype=torch.float32, device=DEVICE).reshape(batch, dim, seqlen)
    values = (values * 0.37).sin().to(dtype)  # distinct in fp32; bf16 rounds, identically on both sides
    if layout == "time":
        return values
    if layout == "channel":
        return values.transpose(1, 2).contiguous().transpose(1, 2)
    # every other channel of a wider tensor, and a batch stride larger than the rest
    wide = torch.zeros(batch, 2 * dim, seqlen + 3, dtype=dtype, device=DEVICE)
    wide[:, ::2, :seqlen] = values
    return wide[:, ::2, :seqlen]


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (1, 65, 63), (3, 130, 129), (2, 64, 200)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["time", "channel", "strided"])
@pytest.mark.parametrize("channel_last", [True, False])
def test_copy_equals_torch(shape, dtype, layout, channel_last):
    x = _source(*shape, dtype, layout)
    out = relayout(x, channel_last, backend="triton")
    expected = relayout_ref(x, channel_last)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.stride() == expected.stride()
    assert torch.equal(out, expected)
    assert out.data_ptr() != x.data_ptr()


def test_reference_layouts():
    x = torch.randn(2, 5, 9)
    assert relayout_ref(x, True).stride() == (45, 1, 5)
    assert relayout_ref(x.transpose(1, 2).contiguous().transpose(1, 2), False).stride() == (45, 9, 1)


def test_auto_on_cpu_uses_torch():
    x = torch.randn(2, 5, 9)
    assert torch.equal(relayout(x, True), x)


@pytest.mark.parametrize("bad", [torch.zeros(4, 5), torch.zeros(1, 2, 3, 4), "x"])
def test_bad_rank(bad):
    with pytest.raises(ValueError, match=r"relayout: x must be a \(batch, dim, L\) tensor"):
        relayout(bad, True)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        relayout(torch.zeros(1, 2, 3), True, backend="cuda")


@needs_gpu
@pytest.mark.gpu
def test_gpu_more_than_2_31_elements():
    """(1, 2048, 2^20 + 5) bf16: 2.1e9 elements, offsets past int32 in both layouts; every bit compared."""
    bits = torch.randint(-(2**15), 2**15 - 1, (1, 2048, 2**20 + 5), dtype=torch.int16, device="cuda")
    x = bits.view(torch.bfloat16)  # random bit patterns, NaNs included: compared as integers
    out = relayout(x, True)
    assert out.stride() == (x.numel(), 1, 2048)
    assert torch.equal(out.view(torch.int16), bits)
    del out
    back = relayout(relayout(x, True), False)
    assert back.stride() == x.stride()
    assert torch.equal(back.view(torch.int16), bits)
