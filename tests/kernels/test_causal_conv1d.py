"""Causal depthwise conv1d: Triton kernels vs an independent float64 oracle.

Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter; with one, the same
tests run compiled on CUDA tensors, and the ``gpu`` tier adds real shapes, >2^31 elements and determinism.
Every Triton call here allocates its outputs NaN-filled (``POISON_OUTPUTS``), so an element a kernel
never writes fails the comparison.
"""

import os

import torch

if not torch.cuda.is_available():
    # Before triton is first imported: kernels launched with backend="triton" then interpret on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import itertools  # noqa: E402

import pytest  # noqa: E402
from dna_mamba.kernels import causal_conv1d  # noqa: E402
from dna_mamba.kernels.causal_conv1d import causal_conv1d_ref  # noqa: E402
from dna_mamba.kernels.causal_conv1d import interface as conv_interface  # noqa: E402
from dna_mamba.kernels.causal_conv1d import triton as conv_triton  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Error allowed against the float64 oracle evaluated on the same (already rounded) inputs: fp32
# accumulation error plus one rounding of the result to its storage dtype (2^-24, 2^-11, 2^-8 relative).
# atol is relative to the largest reference magnitude, so sums over long sequences get a fair scale.
TOLERANCE = {
    torch.float32: {"rtol": 2e-5, "atol": 2e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(conv_interface, "POISON_OUTPUTS", True)


def naive_causal_conv1d(x, weight, bias, initial_state, silu):
    """The op written from its definition in float64: one shifted multiply-add per tap."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    state = torch.zeros(batch, dim, width - 1, dtype=torch.float64) if initial_state is None else initial_state
    xpad = torch.cat([state, x], dim=-1)
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    for k in range(width):
        out = out + weight[:, k, None] * xpad[:, :, k : k + seqlen]
    if bias is not None:
        out = out + bias[:, None]
    if silu:
        out = out * torch.sigmoid(out)
    return out, xpad[:, :, seqlen:]


def make_x(batch, dim, seqlen, dtype, layout, device=DEVICE):
    """x in one of the layouts the op must read without a copy."""
    if layout == "contiguous":  # (B, D, L)
        return torch.randn(batch, dim, seqlen, device=device).to(dtype)
    if layout == "channels_last":  # the model's case: a channel slice of a (B, L, 2D) projection, transposed
        return torch.randn(batch, seqlen, 2 * dim, device=device).to(dtype)[:, :, :dim].transpose(1, 2)
    if layout == "channels_last_dense":  # a whole (B, L, D) tensor, transposed
        return torch.randn(batch, seqlen, dim, device=device).to(dtype).transpose(1, 2)
    if layout == "channels_last_nan_guarded":  # channels last, NaN around it along both channels and time
        return _nan_guarded_channels_last(torch.randn(batch, seqlen, dim, device=device).to(dtype))
    if layout == "strided":  # neither axis contiguous
        return torch.randn(batch, 2 * dim, 2 * seqlen, device=device).to(dtype)[:, ::2, ::2]
    if layout == "nan_guarded":  # NaN on both sides of every row: a read outside x poisons the results
        return _nan_guarded(torch.randn(batch, dim, seqlen, device=device).to(dtype))
    raise ValueError(layout)


def _nan_guarded(values, guard=8):
    """values copied into the middle of a NaN-filled buffer, returned as a view of that middle."""
    buffer = torch.full((*values.shape[:-1], values.shape[-1] + 2 * guard), float("nan"), dtype=values.dtype)
    buffer = buffer.to(values.device)
    buffer[..., guard:-guard] = values
    return buffer[..., guard:-guard]


def _nan_guarded_channels_last(values, guard=8):
    """(B, L, D) values copied into the middle of a NaN-filled (B, L + 2g, D + 2g) buffer; the (B, D, L) view."""
    batch, seqlen, dim = values.shape
    buffer = torch.full((batch, seqlen + 2 * guard, dim + 2 * guard), float("nan"), dtype=values.dtype)
    buffer = buffer.to(values.device)
    buffer[:, guard:-guard, guard:-guard] = values
    return buffer[:, guard:-guard, guard:-guard].transpose(1, 2)


def assert_close(actual, expected, dtype, name):
    tol = TOLERANCE[dtype]
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.cpu(),
        rtol=tol["rtol"],
        atol=tol["atol"] * max(scale, 1.0),
        msg=lambda m: f"{name}: {m}",
    )


def check_against_naive(
    *,
    batch=2,
    dim=5,
    seqlen=63,
    width=4,
    dtype=torch.float32,
    param_dtype=None,
    layout="contiguous",
    dout_layout=None,
    has_bias=True,
    silu=True,
    has_state=True,
    final_grad=True,
    device=DEVICE,
    backend="triton",
):
    """Runs the Triton path (or ``backend``) forward and backward with random upstream gradients; compares everything.

    dout is channels-last (the model's case) unless dout_layout says otherwise; NaN-guarded x gets a guarded dout.
    """
    param_dtype = param_dtype or dtype
    x = make_x(batch, dim, seqlen, dtype, layout, device).requires_grad_()
    # Non-contiguous weight, as a (dim, 1, width) conv weight squeezed or transposed storage would give.
    weight = (torch.randn(width, dim, device=device) * 0.5).to(param_dtype).t().requires_grad_()
    bias = torch.randn(dim, device=device).to(param_dtype).requires_grad_() if has_bias else None
    state = None
    if has_state:
        state = torch.randn(batch, width - 1, dim, device=device).to(dtype).transpose(1, 2).requires_grad_()

    out, final = causal_conv1d(x, weight, bias, "silu" if silu else None, state, True, backend=backend)
    if dout_layout is None:
        dout_layout = layout if layout in ("nan_guarded", "channels_last_nan_guarded") else "channels_last"
    dout = torch.randn(batch, seqlen, dim, device=device).to(dtype).transpose(1, 2)  # strided upstream gradient
    if dout_layout == "contiguous":
        dout = dout.contiguous()
    elif dout_layout == "nan_guarded":
        dout = _nan_guarded(dout.contiguous())
    elif dout_layout == "channels_last_nan_guarded":
        dout = _nan_guarded_channels_last(dout.transpose(1, 2))
    dfinal = torch.randn_like(final) if final_grad else torch.zeros_like(final)
    inputs = [t for t in (x, weight, bias, state) if t is not None]
    loss = (out.float() * dout.float()).sum() + ((final.float() * dfinal.float()).sum() if final_grad else 0.0)
    grads = torch.autograd.grad(loss, inputs)

    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in inputs]
    ref_x, ref_w, *rest = ref_inputs
    ref_b = rest.pop(0) if has_bias else None
    ref_s = rest.pop(0) if has_state else None
    ref_out, ref_final = naive_causal_conv1d(ref_x, ref_w, ref_b, ref_s, silu)
    ref_loss = (ref_out * dout.cpu().double()).sum() + (ref_final * dfinal.cpu().double()).sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs)

    assert out.dtype == dtype and final.dtype == dtype
    assert out.shape == (batch, dim, seqlen) and final.shape == (batch, dim, width - 1)
    assert_close(out, ref_out, dtype, "out")
    # The final state is a copy of inputs: exact in any dtype.
    torch.testing.assert_close(final.cpu(), ref_final.to(dtype), rtol=0, atol=0, msg=lambda m: f"final_state: {m}")
    names = ["dx", "dweight", "dbias", "dinitial_state"]
    names = [n for n, t in zip(names, (x, weight, bias, state), strict=True) if t is not None]
    for name, grad, ref_grad, inp in zip(names, grads, ref_grads, inputs, strict=True):
        assert grad.dtype == inp.dtype and grad.shape == inp.shape, name
        assert_close(grad, ref_grad, dtype if name in ("dx", "dinitial_state") else param_dtype, name)


# Lengths: shorter than the state (1, 2), odd, ending at and around a 128-wide CPU tile edge, so the
# final-state positions L..L+W-2 straddle it (126..128), and spanning several tiles and backward chunks
# (2049). Every width runs with every length; the optional features rotate so each appears with every
# width and with short and long sequences.
LENGTHS = [1, 2, 7, 63, 126, 127, 128, 500, 2049]
_FLAGS = list(itertools.product([True, False], repeat=4))  # has_bias, silu, has_state, final_grad


@pytest.mark.parametrize("seqlen", LENGTHS)
@pytest.mark.parametrize("width", [2, 3, 4])
def test_matches_naive_lengths_and_widths(seqlen, width):
    case = LENGTHS.index(seqlen) * 3 + width
    has_bias, silu, has_state, final_grad = _FLAGS[(case * 5) % len(_FLAGS)]
    layout = ["contiguous", "channels_last"][case % 2]
    dim = 20 if seqlen <= 63 else 5  # 20 spans two CPU channel blocks, the second one partly masked
    check_against_naive(
        seqlen=seqlen, width=width, dim=dim, layout=layout,
        has_bias=has_bias, silu=silu, has_state=has_state, final_grad=final_grad,
    )  # fmt: skip


@pytest.mark.parametrize("has_bias,silu,has_state,final_grad", _FLAGS)
def test_matches_naive_every_feature_combination(has_bias, silu, has_state, final_grad):
    check_against_naive(
        seqlen=130, width=4, dim=3, has_bias=has_bias, silu=silu, has_state=has_state, final_grad=final_grad
    )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_naive_strided_inputs(layout):
    check_against_naive(seqlen=300, width=3, dim=12, layout=layout)


@pytest.mark.parametrize("layout", ["nan_guarded", "channels_last_nan_guarded"])
@pytest.mark.parametrize("seqlen,width", [(2, 4), (63, 2), (128, 4)])
def test_reads_stay_inside_x_and_dout(seqlen, width, layout):
    # Masked-off lanes multiply by zero, so an out-of-range read of finite memory would go unnoticed;
    # NaN guard bands make it fail (0 * NaN = NaN). Channels-last, the bands are along channels and time.
    check_against_naive(seqlen=seqlen, width=width, dim=5, layout=layout)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_cuda_tile_table_under_interpreter(layout, monkeypatch):
    """The GPU block sizes (16- to 512-wide tiles) on CPU too, so the interpreter covers what the GPU runs."""
    table = conv_interface.GPU_TILES["channels_last" if layout == "channels_last" else "sequence_contiguous"]
    monkeypatch.setattr(conv_interface, "INTERPRETER_TILES", table)
    bwd = conv_interface.GPU_BWD_CHANNEL_LAST
    monkeypatch.setattr(conv_interface, "INTERPRETER_BWD_CHANNEL_LAST", {**bwd, "BLOCK_D": 32 * bwd["num_warps"]})
    check_against_naive(seqlen=131, width=4, dim=70, layout=layout, batch=1)


class _MustNotLaunch:
    """Stands in for a kernel that the layout under test must not use."""

    def __init__(self, name):
        self.name = name

    def __getitem__(self, grid):
        raise AssertionError(f"{self.name} was launched")


@pytest.fixture
def channel_last_grids(monkeypatch):
    """Makes the backward take the channel-last kernel (the general one fails the test); the launch grids."""
    grids = []
    kernel = conv_triton._causal_conv1d_bwd_channel_last_kernel

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(conv_triton, "_causal_conv1d_bwd_channel_last_kernel", Recorder())
    monkeypatch.setattr(conv_triton, "_causal_conv1d_bwd_kernel", _MustNotLaunch("the general backward kernel"))
    return grids


# Around the channel-last backward's 8-position CPU tiles and its 2 * (width - 1)-position warm-up; 1 and 2 are
# shorter than the state. Every width runs with every length, the features rotate through all 16 combinations,
# and batch, dim and the way x is laid out rotate too: dims that leave the last 16-channel CPU block partly
# masked, and 1 and 16, which fill their blocks (EVEN_D).
CHANNEL_LAST_LENGTHS = [1, 2, 3, 5, 63, 130, 257]


@pytest.mark.parametrize("seqlen", CHANNEL_LAST_LENGTHS)
@pytest.mark.parametrize("width", [2, 3, 4])
def test_channel_last_backward_matches_naive(seqlen, width, channel_last_grids):
    case = CHANNEL_LAST_LENGTHS.index(seqlen) * 3 + width
    has_bias, silu, has_state, final_grad = _FLAGS[(case * 7) % len(_FLAGS)]
    batch = 1 + case % 2
    dim = [1, 5, 20, 37, 16][case % 5] if seqlen <= 63 else [5, 20, 16][case % 3]
    # A dense (B, L, 1) tensor transposed is contiguous as well, and takes the general kernel.
    layout = "channels_last" if dim == 1 else ["channels_last", "channels_last_dense"][(case // 2) % 2]
    check_against_naive(
        batch=batch, seqlen=seqlen, width=width, dim=dim, layout=layout,
        has_bias=has_bias, silu=silu, has_state=has_state, final_grad=final_grad,
    )  # fmt: skip
    (grid,) = channel_last_grids
    if seqlen + width - 1 > conv_interface.INTERPRETER_BWD_CHANNEL_LAST["T_TILE"]:
        assert grid[1] > 1, "the sequence should span several chunks"


@pytest.mark.parametrize("width", [2, 3, 4])
def test_channel_last_backward_tiny_chunks(width, monkeypatch, channel_last_grids):
    """Chunks of one 2-position tile: each warm-up reaches back over several chunks, and into the initial state."""
    tiles = {"BLOCK_D": 16, "T_TILE": 2, "num_warps": 1, "MAX_CHUNK_TILES": 1}
    monkeypatch.setattr(conv_interface, "INTERPRETER_BWD_CHANNEL_LAST", tiles)
    seqlen = 13
    check_against_naive(batch=2, seqlen=seqlen, width=width, dim=20, layout="channels_last")
    assert channel_last_grids[0][1] == -(-(seqlen + width - 1) // 2)


def test_channel_last_backward_with_dout_broadcast_over_time(channel_last_grids):
    """dout with time stride 0 (one value per channel, expanded) still has unit channel stride: the kernel
    reads it in place, and its constexpr time stride is 0."""
    batch, dim, seqlen, width = 2, 20, 37, 4
    x = make_x(batch, dim, seqlen, torch.float32, "channels_last").requires_grad_()
    weight = torch.randn(dim, width, device=DEVICE, requires_grad=True)
    bias = torch.randn(dim, device=DEVICE, requires_grad=True)
    state = torch.randn(batch, dim, width - 1, device=DEVICE, requires_grad=True)
    dout = torch.randn(batch, dim, 1, device=DEVICE).expand(batch, dim, seqlen)
    out = causal_conv1d(x, weight, bias, "silu", state, backend="triton")
    grads = torch.autograd.grad(out, (x, weight, bias, state), dout)

    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in (x, weight, bias, state)]
    ref_out, _ = naive_causal_conv1d(*ref_inputs, silu=True)
    ref_grads = torch.autograd.grad(ref_out, ref_inputs, dout.cpu().double())
    assert len(channel_last_grids) == 1
    for name, grad, ref_grad in zip(["dx", "dweight", "dbias", "dinitial_state"], grads, ref_grads, strict=True):
        assert_close(grad, ref_grad, torch.float32, name)


def test_channel_last_x_with_other_dout_takes_general_backward(monkeypatch):
    # The channel-last kernel needs dout with unit channel stride too; any other dout is still exact.
    kernel = _MustNotLaunch("the channel-last backward kernel")
    monkeypatch.setattr(conv_triton, "_causal_conv1d_bwd_channel_last_kernel", kernel)
    check_against_naive(seqlen=63, width=4, dim=20, layout="channels_last", dout_layout="contiguous")


@pytest.mark.parametrize(
    "dtype,param_dtype",
    [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16), (torch.bfloat16, torch.float32)],
)
def test_matches_naive_low_precision(dtype, param_dtype):
    # bf16 activations with fp32 weights is what a bf16-autocast model passes.
    check_against_naive(seqlen=300, width=4, dim=6, dtype=dtype, param_dtype=param_dtype, layout="channels_last")


def test_segments_with_carried_state_equal_one_pass():
    """Streaming: three segments chained through final_state -> initial_state backpropagate like one pass."""
    batch, dim, width, lengths = 2, 6, 4, [100, 1, 199]
    x = torch.randn(batch, dim, sum(lengths), device=DEVICE, requires_grad=True)
    weight = torch.randn(dim, width, device=DEVICE, requires_grad=True)
    bias = torch.randn(dim, device=DEVICE, requires_grad=True)
    state0 = torch.randn(batch, dim, width - 1, device=DEVICE, requires_grad=True)
    dout = torch.randn(batch, dim, sum(lengths), device=DEVICE)

    whole = causal_conv1d(x, weight, bias, "silu", state0, backend="triton")
    whole_grads = torch.autograd.grad((whole * dout).sum(), (x, weight, bias, state0))

    pieces, state = [], state0
    for segment in torch.split(x, lengths, dim=-1):
        out, state = causal_conv1d(segment, weight, bias, "silu", state, return_final_state=True, backend="triton")
        pieces.append(out)
    chained = torch.cat(pieces, dim=-1)
    chained_grads = torch.autograd.grad((chained * dout).sum(), (x, weight, bias, state0))

    torch.testing.assert_close(chained, whole, **TOLERANCE[torch.float32])
    for name, got, want in zip(["dx", "dweight", "dbias", "dinitial_state"], chained_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_reference_matches_naive():
    batch, dim, seqlen, width = 2, 7, 50, 3
    x, weight, bias = torch.randn(batch, dim, seqlen), torch.randn(dim, width), torch.randn(dim)
    state = torch.randn(batch, dim, width - 1)
    out, final = causal_conv1d(x, weight, bias, "silu", state, True, backend="reference")
    ref_out, ref_final = naive_causal_conv1d(x.double(), weight.double(), bias.double(), state.double(), True)
    torch.testing.assert_close(out.double(), ref_out, **TOLERANCE[torch.float32])
    torch.testing.assert_close(final.double(), ref_final, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "channels_last_dense"])
@pytest.mark.parametrize(("seqlen", "width", "has_state"), [(1, 4, True), (2, 4, False), (7, 2, True), (63, 3, True),
                                                          (128, 4, False)])
def test_reference_matches_naive_in_each_layout(layout, seqlen, width, has_state):
    """The reference computes channel-last inputs (the model's) in their own layout and time-contiguous ones with
    F.conv1d: both against the float64 oracle, gradients and final state included, also when L < width - 1."""
    check_against_naive(seqlen=seqlen, width=width, layout=layout, has_state=has_state, backend="reference",
                        device=torch.device("cpu"))


def test_auto_backend_falls_back_to_reference_on_cpu(monkeypatch):
    def triton_path_called(*args):
        raise AssertionError("backend='auto' launched Triton for CPU tensors")

    monkeypatch.setattr(conv_interface._CausalConv1dFn, "apply", triton_path_called)
    x, weight = torch.randn(1, 4, 9), torch.randn(4, 4)
    out = causal_conv1d(x, weight, activation="silu")
    torch.testing.assert_close(out, causal_conv1d_ref(x, weight, activation="silu"))


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA"):
        causal_conv1d(torch.randn(1, 4, 9), torch.randn(4, 4), backend="triton")


def test_poison_hook_fills_buffers_with_nan():
    # The hook is what makes unwritten elements fail every comparison above; keep it honest.
    buffer = conv_interface._new_buffer((3, 5), torch.float32, torch.device("cpu"))
    assert torch.isnan(buffer).all()


@pytest.mark.parametrize(
    "change,match",
    [
        ({"x": torch.randn(4, 9)}, r"x must be a \(batch, dim, L\) tensor, got shape \(4, 9\)"),
        ({"weight": torch.randn(4, 1, 4)}, r"weight must be a \(dim, width\) tensor, got shape \(4, 1, 4\)"),
        ({"weight": torch.randn(4, 5)}, r"weight width must be in 2\.\.4, got weight shape \(4, 5\)"),
        ({"weight": torch.randn(4, 1)}, r"width must be in 2\.\.4"),
        ({"weight": torch.randn(3, 4)}, r"weight shape \(3, 4\) does not match dim 4 of x shape \(2, 4, 9\)"),
        ({"bias": torch.randn(5)}, r"bias must have shape \(4,\).*got \(5,\)"),
        ({"initial_state": torch.randn(2, 4, 4)}, r"initial_state must have shape \(2, 4, 3\).*got \(2, 4, 4\)"),
        ({"x": torch.randn(2, 4, 9).double()}, r"x must be float32, float16 or bfloat16, got torch\.float64"),
        ({"weight": torch.ones(4, 4, dtype=torch.int32)}, r"weight must be float32.*torch\.int32"),
        ({"initial_state": torch.randn(2, 4, 3, device="meta")}, r"initial_state is on meta.*but x is on cpu"),
        ({"activation": "relu"}, r"activation must be None or 'silu', got 'relu'"),
        ({"backend": "cuda"}, r"backend must be one of"),
    ],
)
def test_invalid_arguments_raise_value_error(change, match):
    args = {"x": torch.randn(2, 4, 9), "weight": torch.randn(4, 4), "bias": torch.randn(4), "activation": "silu"}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        causal_conv1d(**args)


# ----------------------------------------------------------------------------------------------------
# GPU tier: real shapes, 64-bit offsets, determinism. Outputs are checked channel by channel against
# the float64 oracle: channels never mix, so a subset of channels over the full length is a full check
# of those channels, at a fraction of the oracle's memory.


def _check_channels(out, final, grads, x, weight, bias, state, dout, dfinal, channels, dtype):
    pick = channels.to(x.device)
    sub = [t.detach()[:, pick].cpu().double() for t in (x, state)]
    w, b = weight.detach()[pick].cpu().double(), bias.detach()[pick].cpu().double()
    sub_x, sub_s, w, b = (t.requires_grad_() for t in (*sub, w, b))
    ref_out, ref_final = naive_causal_conv1d(sub_x, w, b, sub_s, True)
    loss = (ref_out * dout[:, pick].cpu().double()).sum() + (ref_final * dfinal[:, pick].cpu().double()).sum()
    ref_dx, ref_dw, ref_db, ref_ds = torch.autograd.grad(loss, (sub_x, w, b, sub_s))
    dx, dw, db, ds = grads
    assert_close(out[:, pick], ref_out, dtype, "out")
    torch.testing.assert_close(final[:, pick].cpu(), ref_final.to(dtype), rtol=0, atol=0)
    assert_close(dx[:, pick], ref_dx, dtype, "dx")
    assert_close(ds[:, pick], ref_ds, dtype, "dinitial_state")
    assert_close(dw[pick], ref_dw, weight.dtype, "dweight")
    assert_close(db[pick], ref_db, bias.dtype, "dbias")


def _run_full(x, width, dtype, seed=0):
    torch.manual_seed(seed)
    batch, dim, _ = x.shape
    weight = (torch.randn(dim, width, device=x.device) * 0.5).requires_grad_()
    bias = torch.randn(dim, device=x.device).requires_grad_()
    state = torch.randn(batch, dim, width - 1, device=x.device).to(dtype).requires_grad_()
    out, final = causal_conv1d(x, weight, bias, "silu", state, True, backend="triton")
    dout = torch.randn_like(out)
    dfinal = torch.randn_like(final)
    grads = torch.autograd.grad((out, final), (x, weight, bias, state), (dout, dfinal))
    return out, final, grads, weight, bias, state, dout, dfinal


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("seqlen", [1, 2, 7, 63, 500, 2049])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gpu_matches_naive_short(seqlen, layout):
    # The GPU tile table differs from the interpreter's; run its edge lengths too (one width per length).
    width = [2, 3, 4][seqlen % 3]
    check_against_naive(seqlen=seqlen, width=width, dim=70, layout=layout, dtype=torch.bfloat16)
    check_against_naive(seqlen=seqlen, width=width, dim=130, layout=layout, dtype=torch.float32)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_real_shape(dtype):
    """batch 1, dim 512, L 2^20 in the model's channels-last layout."""
    dim, seqlen, width = 512, 1 << 20, 4
    x = make_x(1, dim, seqlen, dtype, "channels_last").requires_grad_()
    out, final, grads, weight, bias, state, dout, dfinal = _run_full(x, width, dtype)
    for name, t in zip(["out", "final", "dx", "dweight", "dbias", "dstate"], [out, final, *grads], strict=True):
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) or non-finite elements"
    channels = torch.tensor([0, 1, 63, 64, 200, 447, 510, 511])  # both ends and both sides of tile edges
    _check_channels(out, final, grads, x, weight, bias, state, dout, dfinal, channels, dtype)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gpu_more_than_2_31_elements(layout):
    dim, seqlen, width = 2048, (1 << 20) + 5, 4
    assert dim * seqlen > 2**31
    x = make_x(1, dim, seqlen, torch.bfloat16, layout).requires_grad_()
    out, final, grads, weight, bias, state, dout, dfinal = _run_full(x, width, torch.bfloat16)
    # The largest offsets: the last channels (contiguous) and the end of the sequence (channels-last).
    channels = torch.tensor([0, 1000, 2046, 2047])
    _check_channels(out, final, grads, x, weight, bias, state, dout, dfinal, channels, torch.bfloat16)
    for t in (out, grads[0]):
        assert torch.isfinite(t[:, :, -4096:]).all() and torch.isfinite(t[:, -64:]).all()


@pytest.mark.gpu
@needs_gpu
def test_gpu_deterministic():
    x = make_x(2, 512, 1 << 18, torch.bfloat16, "channels_last").requires_grad_()
    first = _run_full(x, 4, torch.bfloat16, seed=1)
    second = _run_full(x, 4, torch.bfloat16, seed=1)
    for a, b in zip([first[0], first[1], *first[2]], [second[0], second[1], *second[2]], strict=True):
        assert torch.equal(a, b)
