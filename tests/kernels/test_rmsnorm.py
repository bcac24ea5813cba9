"""Fused residual add + RMSNorm: both backends vs an independent float64 oracle.

Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter; with one, the same
tests run compiled on CUDA tensors, and the ``gpu`` tier adds a real shape (2^20 rows of bf16), a tensor of
more than 2^31 elements, bit-identical reruns and a bound on the memory the op allocates. Every Triton call
here allocates its outputs NaN-filled (``POISON_OUTPUTS``), so an element a kernel never writes fails.

The op normalises the ``new_residual`` it stores, i.e. after rounding the sum to the storage dtype, so the
oracle normalises the returned ``new_residual`` and passes gradients straight through that rounding; the
stored value itself is checked against the exact float64 sum. (The interpreter rounds fp32 -> bf16 toward
zero where the GPU rounds to nearest even; both are within the bf16 tolerance of the exact sum.)
"""

import os

import torch

if not torch.cuda.is_available():
    # Before triton is first imported: kernels launched with backend="triton" then interpret on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from dna_mamba.kernels import add_rms_norm  # noqa: E402
from dna_mamba.kernels.rmsnorm import add_rms_norm_ref  # noqa: E402
from dna_mamba.kernels.rmsnorm import interface as rms_interface  # noqa: E402

from dna_mamba.model.mamba import RMSNorm  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BACKENDS = ["triton", "reference"]
EPS = 1e-5

# Error allowed against the float64 oracle evaluated on the same (already rounded) inputs, keyed by the
# dtype the checked tensor is stored in: fp32 arithmetic plus one rounding to that dtype (2^-24, 2^-11,
# 2^-8 relative, with margin). atol is relative to the largest reference magnitude, so sums over many
# rows (dweight) get a fair scale.
TOLERANCE = {
    torch.float64: {"rtol": 2e-5, "atol": 2e-5},  # computed in fp32 like the rest
    torch.float32: {"rtol": 2e-5, "atol": 2e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
    torch.bfloat16: {"rtol": 1.6e-2, "atol": 1.6e-2},
}


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(rms_interface, "POISON_OUTPUTS", True)


def naive_add_rms_norm(x, weight, residual, eps, stored_residual):
    """The op from its definition in float64; returns (out, exact sum x + residual).

    ``stored_residual`` is the op's returned new_residual: its value (the rounded sum) is what gets
    normalised, while gradients pass straight through the rounding to the exact sum.
    """
    total = x if residual is None else x + residual
    r = total + (stored_residual - total).detach()
    mean_square = (r * r).sum(dim=-1, keepdim=True) / r.shape[-1]
    out = r / torch.sqrt(mean_square + eps) * weight
    return out, total


def assert_close(actual, expected, dtype, name):
    tol = TOLERANCE[dtype]
    scale = expected.abs().max().item() if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double().cpu(),
        expected.double().cpu(),
        rtol=tol["rtol"],
        atol=tol["atol"] * max(scale, 1.0),
        msg=lambda m: f"{name}: {m}",
    )


def _nan_guarded(values, guard=3):
    """values copied into the middle of a NaN-filled buffer (along the last two dims), returned as that view.

    The view is strided in its leading dims, and any read outside it (a neighbouring row or a feature
    past d) brings in NaN, which masked-off lanes multiplied by zero would not hide (0 * NaN = NaN).
    """
    *lead, rows, dim = values.shape
    buffer = torch.full((*lead, rows + 2 * guard, dim + 2 * guard), float("nan"), dtype=values.dtype)
    buffer = buffer.to(values.device)
    buffer[..., guard:-guard, guard:-guard] = values
    return buffer[..., guard:-guard, guard:-guard]


def make_tensor(shape, dtype, layout="contiguous", device=DEVICE):
    values = torch.randn(*shape, device=device)
    if layout == "contiguous":
        return values.to(dtype)
    if layout == "nan_guarded":  # rows strided in place, reads outside them poisoned
        return _nan_guarded(values.to(dtype))
    if layout == "rows_transposed":  # (B, L, d) stored as (L, B, d): leading strides out of order
        return values.transpose(0, 1).contiguous().transpose(0, 1).to(dtype)
    if layout == "features_strided":  # last dim not unit-stride: the op copies it (documented)
        return values.movedim(-1, 0).contiguous().movedim(0, -1).to(dtype)
    raise ValueError(layout)


def check_against_naive(
    shape,
    *,
    backend,
    x_dtype=torch.float32,
    residual_dtype=torch.float32,
    weight_dtype=torch.float32,
    has_residual=True,
    residual_in_fp32=True,
    out_dtype=None,
    upstream=("out", "new_residual"),
    layouts=("contiguous",) * 4,
    device=DEVICE,
):
    """Runs the op forward and backward with random upstream gradients on the listed outputs; compares all.

    ``layouts`` are those of x, residual, dout and dnew_residual.
    """
    x = make_tensor(shape, x_dtype, layouts[0], device).requires_grad_()
    residual = make_tensor(shape, residual_dtype, layouts[1], device).requires_grad_() if has_residual else None
    weight = (1.0 + 0.5 * torch.randn(shape[-1], device=device)).to(weight_dtype).requires_grad_()

    out, new_residual = add_rms_norm(
        x, weight, residual, eps=EPS, residual_in_fp32=residual_in_fp32, out_dtype=out_dtype, backend=backend
    )
    expected_residual_dtype = torch.float32 if residual_in_fp32 else x_dtype
    assert out.dtype == (out_dtype or weight_dtype) and out.shape == x.shape
    assert new_residual.dtype == expected_residual_dtype and new_residual.shape == x.shape

    dout = make_tensor(shape, out.dtype, layouts[2], device)
    dnew = make_tensor(shape, new_residual.dtype, layouts[3], device)
    outputs, grad_outputs = [], []
    if "out" in upstream:
        outputs.append(out)
        grad_outputs.append(dout)
    if "new_residual" in upstream:
        outputs.append(new_residual)
        grad_outputs.append(dnew)
    inputs = [t for t in (x, residual, weight) if t is not None]
    grads = torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True)

    ref_inputs = [t.detach().cpu().double().requires_grad_() for t in inputs]
    ref_x, *rest = ref_inputs
    ref_res = rest.pop(0) if has_residual else None
    ref_w = rest.pop(0)
    ref_out, ref_total = naive_add_rms_norm(ref_x, ref_w, ref_res, EPS, new_residual.detach().cpu().double())
    ref_loss = ref_out.sum() * 0.0
    if "out" in upstream:
        ref_loss = ref_loss + (ref_out * dout.cpu().double()).sum()
    if "new_residual" in upstream:
        ref_loss = ref_loss + (ref_total * dnew.cpu().double()).sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_inputs)

    assert_close(new_residual, ref_total, new_residual.dtype, "new_residual")
    assert_close(out, ref_out, out.dtype, "out")
    names = [n for n, t in zip(("dx", "dresidual", "dweight"), (x, residual, weight), strict=True) if t is not None]
    for name, grad, ref_grad, inp in zip(names, grads, ref_grads, inputs, strict=True):
        if grad is None:  # a None gradient is a zero gradient (here: dweight without an upstream dout)
            assert not ref_grad.any(), f"{name} is None but the oracle's is nonzero"
            continue
        assert grad.dtype == inp.dtype and grad.shape == inp.shape, name
        tol_dtype = inp.dtype
        if backend == "reference" and name != "dweight":
            # Plain autograd rounds the gradient flowing back through a low-precision new_residual to
            # its dtype; the Triton backward keeps it in fp32 until the store.
            tol_dtype = max(inp.dtype, new_residual.dtype, key=lambda dt: TOLERANCE[dt]["rtol"])
        assert_close(grad, ref_grad, tol_dtype, name)
    return out, new_residual, grads


# Shapes: a single row, rows that fill no tile, 390 rows over several tiles and backward programs, d = 1,
# d = 257 (one past a power of two: a 512-wide tile mostly masked), and 2-D and 4-D inputs.
SHAPES = [(1, 1, 8), (2, 7, 40), (3, 130, 96), (5, 1), (2, 3, 257), (2, 3, 5, 24)]
# (has_residual, residual_in_fp32): the first block (no residual yet) and the later ones, both storage modes.
RESIDUAL_MODES = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("has_residual,residual_in_fp32", RESIDUAL_MODES)
def test_matches_naive_fp32(backend, shape, has_residual, residual_in_fp32):
    check_against_naive(shape, backend=backend, has_residual=has_residual, residual_in_fp32=residual_in_fp32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 7, 40), (3, 130, 96), (5, 1), (2, 3, 257)])
@pytest.mark.parametrize("has_residual,residual_in_fp32", RESIDUAL_MODES)
def test_matches_naive_bf16(backend, shape, has_residual, residual_in_fp32):
    # A bf16 model: bf16 activations and gain; the residual stream is fp32 exactly when residual_in_fp32.
    residual_dtype = torch.float32 if residual_in_fp32 else torch.bfloat16
    check_against_naive(
        shape, backend=backend, x_dtype=torch.bfloat16, residual_dtype=residual_dtype, weight_dtype=torch.bfloat16,
        has_residual=has_residual, residual_in_fp32=residual_in_fp32,
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "x_dtype,residual_dtype,weight_dtype,out_dtype",
    [
        (torch.bfloat16, torch.float32, torch.float32, None),  # bf16 autocast: fp32 gain, fp32 out
        (torch.bfloat16, torch.float32, torch.float32, torch.bfloat16),  # ... with a bf16 out for the next matmul
        (torch.float16, torch.bfloat16, torch.bfloat16, torch.float16),
        (torch.float64, torch.float64, torch.float64, None),
    ],
)
def test_matches_naive_mixed_dtypes(backend, x_dtype, residual_dtype, weight_dtype, out_dtype):
    for residual_in_fp32 in (True, False):
        check_against_naive(
            (2, 9, 48), backend=backend, x_dtype=x_dtype, residual_dtype=residual_dtype, weight_dtype=weight_dtype,
            residual_in_fp32=residual_in_fp32, out_dtype=out_dtype,
        )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("upstream", [("out",), ("new_residual",)])
@pytest.mark.parametrize("has_residual", [True, False])
def test_gradient_on_one_output_only(backend, upstream, has_residual):
    # The last block's residual stream gets no gradient; a stream used only downstream gets no dout.
    check_against_naive((2, 7, 40), backend=backend, has_residual=has_residual, upstream=upstream)
    check_against_naive(
        (2, 7, 40), backend=backend, x_dtype=torch.bfloat16, has_residual=has_residual, upstream=upstream
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "layouts",
    [
        ("nan_guarded",) * 4,
        ("rows_transposed", "nan_guarded", "rows_transposed", "contiguous"),
        ("features_strided", "rows_transposed", "features_strided", "nan_guarded"),
    ],
)
def test_strided_inputs_and_gradients(backend, layouts):
    # Rows strided in place (x[:, :L] of a bigger buffer cannot be flattened to one row stride) and
    # out-of-order leading dims are read without a copy; a strided last dim is copied first.
    check_against_naive((3, 11, 24), backend=backend, layouts=layouts)
    check_against_naive((3, 11, 24), backend=backend, layouts=layouts, has_residual=False, residual_in_fp32=False)


def test_expanded_upstream_gradient():
    # out.sum() sends a gradient with all strides 0.
    x = torch.randn(2, 5, 16, device=DEVICE, requires_grad=True)
    weight = torch.randn(16, device=DEVICE, requires_grad=True)
    out, new_residual = add_rms_norm(x, weight, backend="triton")
    got = torch.autograd.grad(out.sum() + new_residual.sum(), (x, weight))
    ref_out, ref_res = add_rms_norm_ref(x, weight)
    want = torch.autograd.grad(ref_out.sum() + ref_res.sum(), (x, weight))
    for name, g, w in zip(("dx", "dweight"), got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def _interpreter_plan(n_rows, dim):
    cfg = rms_interface._tile_config(dim, torch.device("cpu"))
    rows_per_program = rms_interface._bwd_rows_per_program(n_rows, cfg["ROWS_BWD"], torch.device("cpu"))
    return cfg, rows_per_program


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter's tiling; the GPU tier covers its own")
def test_every_element_written_with_ragged_tiles_and_programs():
    """Rows not a multiple of the forward tile, the backward tile or the rows per backward program."""
    dim = 40
    cfg, _ = _interpreter_plan(1, dim)
    n_rows = 2 * cfg["ROWS_FWD"] + 3
    cfg, rows_per_program = _interpreter_plan(n_rows, dim)
    assert n_rows % cfg["ROWS_FWD"] and n_rows % cfg["ROWS_BWD"] and n_rows % rows_per_program
    assert -(-n_rows // rows_per_program) > 1, "several dweight partial rows"
    out, new_residual, grads = check_against_naive((n_rows, dim), backend="triton", residual_in_fp32=False)
    for name, t in zip(("out", "new_residual", "dx", "dresidual", "dweight"), (out, new_residual, *grads), strict=True):
        assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) elements"


def test_gpu_tile_table_under_interpreter(monkeypatch):
    """The GPU tile sizes (and many backward programs) on CPU too, so the interpreter covers what the GPU runs."""
    monkeypatch.setattr(rms_interface, "INTERPRETER_TILE_ELEMENTS", rms_interface.GPU_TILE_ELEMENTS)
    monkeypatch.setattr(rms_interface, "INTERPRETER_BWD_PROGRAMS", 7)
    check_against_naive((3, 45, 96), backend="triton")
    check_against_naive((2, 5, 1500), backend="triton", x_dtype=torch.bfloat16, residual_in_fp32=False)


def test_dweight_is_deterministic():
    x = torch.randn(4, 300, 96, device=DEVICE).to(torch.bfloat16).requires_grad_()
    residual = torch.randn(4, 300, 96, device=DEVICE, requires_grad=True)
    weight = torch.randn(96, device=DEVICE, requires_grad=True)
    dout = torch.randn(4, 300, 96, device=DEVICE)
    dnew = torch.randn(4, 300, 96, device=DEVICE)

    def run():
        outputs = add_rms_norm(x, weight, residual, backend="triton")
        return torch.autograd.grad(outputs, (x, residual, weight), (dout, dnew))

    first, second = run(), run()
    for name, a, b in zip(("dx", "dresidual", "dweight"), first, second, strict=True):
        assert torch.equal(a, b), f"{name} differs between two identical backward runs"


def test_no_residual_and_no_cast_returns_x_itself():
    # Before the first block with residual_in_fp32 and fp32 x, new_residual is x: no copy is written.
    x = torch.randn(2, 7, 40, device=DEVICE, requires_grad=True)
    weight = torch.randn(40, device=DEVICE)
    _, new_residual = add_rms_norm(x, weight, backend="triton")
    assert new_residual.data_ptr() == x.data_ptr()


def test_saves_new_residual_and_rstd_but_not_out():
    x = torch.randn(2, 7, 40, device=DEVICE).to(torch.bfloat16).requires_grad_()
    residual = torch.randn(2, 7, 40, device=DEVICE, requires_grad=True)
    weight = torch.randn(40, device=DEVICE, requires_grad=True)
    out, new_residual = add_rms_norm(x, weight, residual, backend="triton")
    saved = out.grad_fn.saved_tensors
    assert not any(t.data_ptr() == out.data_ptr() for t in saved)
    assert any(t.data_ptr() == new_residual.data_ptr() for t in saved)
    rstd = [t for t in saved if t.shape == (14,)]
    assert len(rstd) == 1 and rstd[0].dtype == torch.float32
    assert len(saved) == 3  # new_residual, weight, rstd


@pytest.mark.parametrize("residual_in_fp32", [True, False])
def test_reference_matches_the_model_bitwise(residual_in_fp32):
    """The reference is Block._add followed by the model's RMSNorm, in the same operation order."""
    norm = RMSNorm(48)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(48))
    x = torch.randn(2, 9, 48).to(torch.bfloat16)
    residual = torch.randn(2, 9, 48) if residual_in_fp32 else torch.randn(2, 9, 48).to(torch.bfloat16)
    model_residual = residual.float() + x.float() if residual_in_fp32 else residual + x  # Block._add
    out, new_residual = add_rms_norm(x, norm.weight, residual, residual_in_fp32=residual_in_fp32, backend="reference")
    assert torch.equal(new_residual, model_residual)
    assert torch.equal(out, norm(model_residual))


def test_auto_backend_falls_back_to_reference_on_cpu(monkeypatch):
    def triton_path_called(*args):
        raise AssertionError("backend='auto' launched Triton for CPU tensors")

    monkeypatch.setattr(rms_interface._AddRMSNormFn, "apply", triton_path_called)
    x, weight, residual = torch.randn(3, 16), torch.randn(16), torch.randn(3, 16)
    out, new_residual = add_rms_norm(x, weight, residual)
    ref_out, ref_residual = add_rms_norm_ref(x, weight, residual)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(new_residual, ref_residual)


def test_empty_input_uses_reference():
    x = torch.randn(0, 5, 16, device=DEVICE)
    out, new_residual = add_rms_norm(x, torch.ones(16, device=DEVICE), x, backend="triton")
    assert out.shape == (0, 5, 16) and new_residual.shape == (0, 5, 16)


def test_triton_backend_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA"):
        add_rms_norm(torch.randn(2, 8), torch.randn(8), backend="triton")


def test_poison_hook_fills_buffers_with_nan():
    # The hook is what makes unwritten elements fail every comparison above; keep it honest.
    buffer = rms_interface._new_buffer((3, 5), torch.float32, torch.device("cpu"))
    assert torch.isnan(buffer).all()


@pytest.mark.parametrize(
    "change,match",
    [
        ({"x": torch.tensor(1.0)}, r"x must be a \(\.\.\., d\) tensor with at least one dim, got shape \(\)"),
        ({"weight": torch.randn(9)}, r"weight must have shape \(8,\) for x shape \(2, 3, 8\), got \(9,\)"),
        ({"weight": torch.randn(1, 8)}, r"weight must have shape \(8,\).*got \(1, 8\)"),
        ({"residual": torch.randn(2, 4, 8)}, r"residual must have the shape of x \(2, 3, 8\), got \(2, 4, 8\)"),
        ({"residual": torch.randn(3, 8)}, r"residual must have the shape of x \(2, 3, 8\), got \(3, 8\)"),
        ({"x": torch.ones(2, 3, 8, dtype=torch.int32)}, r"x must be float16.*got torch\.int32 \(shape \(2, 3, 8\)\)"),
        ({"weight": torch.ones(8, dtype=torch.int64)}, r"weight must be float16.*torch\.int64"),
        ({"residual": torch.ones(2, 3, 8, dtype=torch.bool)}, r"residual must be float16.*torch\.bool"),
        ({"residual": torch.randn(2, 3, 8, device="meta")}, r"residual is on meta \(shape \(2, 3, 8\)\).*x is on cpu"),
        ({"weight": torch.randn(8, device="meta")}, r"weight is on meta \(shape \(8,\)\) but x is on cpu"),
        ({"out_dtype": torch.int8}, r"out_dtype must be None, float16.*torch\.int8"),
        ({"eps": -1.0}, r"eps must be a non-negative number, got -1\.0"),
        ({"backend": "cuda"}, r"backend must be one of \('auto', 'triton', 'reference'\), got 'cuda'"),
    ],
)
def test_invalid_arguments_raise_value_error(change, match):
    args = {"x": torch.randn(2, 3, 8), "weight": torch.randn(8), "residual": torch.randn(2, 3, 8)}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        add_rms_norm(**args)


def test_triton_backend_rejects_rows_wider_than_a_tile():
    dim = rms_interface.MAX_TRITON_DIM + 1
    with pytest.raises(ValueError, match=rf"supports d <= {dim - 1}, got x shape \(2, {dim}\)"):
        add_rms_norm(torch.randn(2, dim, device=DEVICE), torch.randn(dim, device=DEVICE), backend="triton")


# The forward and backward for a caller that runs its own backward (the fused Mamba block): rstd kept, the
# residual stream's gradient added in the backward's pass, dx written into a slice of the caller's buffer or over
# x itself.


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dx_into", ["new", "slice", "x itself"])
@pytest.mark.parametrize("with_dresidual", [True, False])
def test_own_backward_matches_naive(x_dtype, dx_into, with_dresidual):
    torch.manual_seed(0)
    batch, length, dim, t0, t1 = 2, 19, 40, 5, 16
    full = _nan_guarded(torch.randn(batch, length, dim, device=DEVICE).to(x_dtype))  # reads outside it: NaN
    x = full[:, t0:t1]  # a piece of a longer sequence: strided along batch
    weight = torch.randn(dim, device=DEVICE)
    dout = torch.randn(x.shape, device=DEVICE)
    dresidual = torch.randn(x.shape, device=DEVICE) if with_dresidual else None

    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    expected_out, _ = naive_add_rms_norm(x64, w64, None, EPS, x64)
    expected_out.backward(dout.double())
    expected_dx = x64.grad + (0 if dresidual is None else dresidual.double())

    out, rstd = rms_interface.rms_norm_forward(x, weight, EPS, torch.float32)
    assert rstd.shape == (batch * (t1 - t0),) and rstd.dtype == torch.float32
    assert_close(out, expected_out, torch.float32, "out")
    dx_out = None
    if dx_into == "slice":
        dx_buffer = torch.full((batch, length, dim), float("nan"), dtype=x_dtype, device=DEVICE)
        dx_out = dx_buffer[:, t0:t1]
    elif dx_into == "x itself":  # each row read before it is overwritten
        dx_out = x
    dx, dweight = rms_interface.rms_norm_backward(x, weight, rstd, dout, dresidual, dx_out=dx_out)
    assert dx.dtype == x_dtype and dx.shape == x.shape
    if dx_out is not None:
        assert dx.data_ptr() == dx_out.data_ptr()
    if dx_into == "slice":
        assert dx_buffer[:, :t0].isnan().all() and dx_buffer[:, t1:].isnan().all()  # nothing else touched
    assert_close(dx, expected_dx, x_dtype, "dx")
    assert_close(dweight, w64.grad, torch.float32, "dweight")


def test_own_backward_without_dx_gives_dweight_only():
    x, weight, dout = torch.randn(3, 7, 24, device=DEVICE), torch.randn(24, device=DEVICE), torch.randn(3, 7, 24)
    _, rstd = rms_interface.rms_norm_forward(x, weight, EPS, torch.float32)
    dx, dweight = rms_interface.rms_norm_backward(x, weight, rstd, dout.to(DEVICE), want_dx=False)
    _, expected = rms_interface.rms_norm_backward(x, weight, rstd, dout.to(DEVICE))
    assert dx is None
    torch.testing.assert_close(dweight, expected, rtol=0, atol=0)


def test_own_backward_rejects_mismatched_shapes():
    x, weight = torch.randn(2, 5, 8, device=DEVICE), torch.randn(8, device=DEVICE)
    _, rstd = rms_interface.rms_norm_forward(x, weight, EPS, torch.float32)
    with pytest.raises(ValueError, match=r"dresidual must have x's shape \(2, 5, 8\), got \(2, 4, 8\)"):
        rms_interface.rms_norm_backward(x, weight, rstd, torch.randn_like(x), torch.randn(2, 4, 8, device=DEVICE))
    with pytest.raises(ValueError, match="dx_out must be viewable as rows in place"):
        rms_interface.rms_norm_backward(x, weight, rstd, torch.randn_like(x),
                                        dx_out=torch.randn(8, 5, 2, device=DEVICE).transpose(0, 2))


# ----------------------------------------------------------------------------------------------------
# GPU tier: real shapes, 64-bit offsets, determinism and memory. Rows never mix except in dweight, so
# out, new_residual, dx and dresidual are checked on a subset of rows against the float64 oracle, and
# dweight over all rows by the oracle run chunk by chunk on the GPU.


def _run_full(shape, x_dtype, residual_dtype, weight_dtype, residual_in_fp32, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(*shape, device="cuda").to(x_dtype).requires_grad_()
    residual = torch.randn(*shape, device="cuda").to(residual_dtype).requires_grad_()
    weight = (1.0 + 0.5 * torch.randn(shape[-1], device="cuda")).to(weight_dtype).requires_grad_()
    out, new_residual = add_rms_norm(x, weight, residual, residual_in_fp32=residual_in_fp32, backend="triton")
    dout = torch.randn_like(out)
    dnew = torch.randn_like(new_residual)
    grads = torch.autograd.grad((out, new_residual), (x, residual, weight), (dout, dnew))
    return x, residual, weight, out, new_residual, dout, dnew, grads


def _check_rows(rows, x, residual, weight, out, new_residual, dout, dnew, grads):
    """out, new_residual, dx, dresidual on the given rows of (..., d) flattened; dweight over all rows."""
    dim = x.shape[-1]
    flat = [t.detach().reshape(-1, dim) for t in (x, residual, out, new_residual, dout, dnew, grads[0], grads[1])]
    x2, res2, out2, new2, dout2, dnew2, dx2, dres2 = flat
    pick = rows.to(x.device)
    sub_x, sub_res = (t[pick].cpu().double().requires_grad_() for t in (x2, res2))
    w64 = weight.detach().cpu().double()
    ref_out, ref_total = naive_add_rms_norm(sub_x, w64, sub_res, EPS, new2[pick].cpu().double())
    loss = (ref_out * dout2[pick].cpu().double()).sum() + (ref_total * dnew2[pick].cpu().double()).sum()
    ref_dx, ref_dres = torch.autograd.grad(loss, (sub_x, sub_res))
    assert_close(new2[pick], ref_total, new_residual.dtype, "new_residual")
    assert_close(out2[pick], ref_out, out.dtype, "out")
    assert_close(dx2[pick], ref_dx, x.dtype, "dx")
    assert_close(dres2[pick], ref_dres, residual.dtype, "dresidual")

    # dweight = sum over rows of dout * normalised stored residual, in float64 on the GPU, 2^16 rows at a time.
    ref_dw = torch.zeros(dim, dtype=torch.float64, device=x.device)
    for r, g in zip(new2.split(1 << 16), dout2.split(1 << 16), strict=True):
        r = r.double()
        y = r / torch.sqrt((r * r).sum(-1, keepdim=True) / dim + EPS)
        ref_dw += (g.double() * y).sum(0)
    assert_close(grads[2], ref_dw, weight.dtype, "dweight")


@pytest.mark.gpu
@needs_gpu
class TestGpu:
    @pytest.mark.parametrize("shape", [(1, 1, 8), (2, 7, 40), (3, 130, 96), (5, 1), (2, 3, 257), (4, 333, 2048)])
    def test_matches_naive_with_gpu_tiles(self, shape):
        check_against_naive(shape, backend="triton", x_dtype=torch.bfloat16, weight_dtype=torch.bfloat16)
        check_against_naive(shape, backend="triton", residual_in_fp32=False, has_residual=False)

    @pytest.mark.parametrize(
        "x_dtype,residual_dtype,weight_dtype,residual_in_fp32",
        [
            (torch.bfloat16, torch.bfloat16, torch.bfloat16, False),  # a bf16 model
            (torch.bfloat16, torch.float32, torch.float32, True),  # bf16 autocast, fp32 residual stream
        ],
    )
    def test_real_shape(self, x_dtype, residual_dtype, weight_dtype, residual_in_fp32):
        """One 2^20-token sequence at d_model 256; also bounds what the op allocates beyond its results."""
        shape, dim = (1, 1 << 20, 256), 256
        torch.manual_seed(0)
        x = torch.randn(*shape, device="cuda").to(x_dtype).requires_grad_()
        residual = torch.randn(*shape, device="cuda").to(residual_dtype).requires_grad_()
        weight = (1.0 + 0.5 * torch.randn(dim, device="cuda")).to(weight_dtype).requires_grad_()
        out_dtype = weight_dtype
        new_dtype = torch.float32 if residual_in_fp32 else x_dtype
        dout = torch.randn(*shape, device="cuda").to(out_dtype)
        dnew = torch.randn(*shape, device="cuda").to(new_dtype)

        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out, new_residual = add_rms_norm(x, weight, residual, residual_in_fp32=residual_in_fp32, backend="triton")
        grads = torch.autograd.grad((out, new_residual), (x, residual, weight), (dout, dnew))
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - baseline

        # The results themselves (out, new_residual, dx, dresidual, which share one buffer when their
        # dtypes agree) plus the fp32 rstd per row; the dweight partials and allocator rounding fit in 64 MiB.
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (out, new_residual, *grads)}
        needed = sum(storages.values()) + 4 * x.numel() // dim
        mib = 2**20
        assert extra <= needed + 64 * mib, f"allocated {extra / mib:.0f} MiB; the results take {needed / mib:.0f} MiB"

        names = ("out", "new_residual", "dx", "dresidual", "dweight")
        for name, t in zip(names, (out, new_residual, *grads), strict=True):
            assert torch.isfinite(t).all(), f"{name} has unwritten (NaN) or non-finite elements"
        n_rows = x.numel() // dim
        rows = torch.cat([torch.arange(0, 512), torch.arange(n_rows // 2 - 256, n_rows // 2 + 256),
                          torch.arange(n_rows - 512, n_rows)])  # fmt: skip
        _check_rows(rows, x, residual, weight, out, new_residual, dout, dnew, grads)

    def test_more_than_2_31_elements(self):
        shape, dim = (1, (1 << 20) + 3, 2048), 2048
        assert shape[1] * dim > 2**31
        x, residual, weight, out, new_residual, dout, dnew, grads = _run_full(
            shape, torch.bfloat16, torch.bfloat16, torch.bfloat16, False
        )
        n_rows = shape[1]
        for t in (out, new_residual, grads[0], grads[1]):
            assert torch.isfinite(t[:, -4096:]).all()
        rows = torch.cat([torch.arange(0, 64), torch.arange(n_rows - 256, n_rows)])  # the largest offsets
        _check_rows(rows, x, residual, weight, out, new_residual, dout, dnew, grads)

    def test_deterministic(self):
        args = ((2, 1 << 18, 512), torch.bfloat16, torch.float32, torch.float32, True)
        first = _run_full(*args, seed=1)
        second = _run_full(*args, seed=1)
        for a, b in zip((*first[3:5], *first[7]), (*second[3:5], *second[7]), strict=True):
            assert torch.equal(a, b)
