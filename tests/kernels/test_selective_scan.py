"""Selective scan: the Triton kernels and the chunked reference against an independent float64 oracle.

Without a GPU the Triton kernels run on CPU tensors through the Triton interpreter (slow, so the shapes are
small but cover several chunks, ragged lengths, non-power-of-two widths and every optional input). With a GPU
the same tests run compiled, and the ``gpu`` tier adds bf16 at real shapes, L = 2^20, a tensor of more than
2^31 elements and bit-identical dB / dC across runs. Triton outputs are allocated NaN-filled
(``POISON_OUTPUTS``), so an element a kernel never writes fails the comparison.
"""

import os

import torch

if not torch.cuda.is_available():
    # Before triton is first imported: kernels launched with backend="triton" then interpret on CPU.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dna_mamba.kernels import selective_scan  # noqa: E402
from dna_mamba.kernels.layout import relayout  # noqa: E402
from dna_mamba.kernels.selective_scan import interface as scan_interface  # noqa: E402
from dna_mamba.kernels.selective_scan import selective_scan_ref  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# Relative error ||out - ref|| / ||ref|| allowed against the float64 oracle run on the same rounded inputs:
# fp32 state and accumulation over up to a few thousand steps, plus one rounding of the stored output.
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    monkeypatch.setattr(scan_interface, "POISON_OUTPUTS", True)


def naive_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state):
    """The op from its definition, one time step at a time, in whatever dtype it is given (float64 here)."""
    batch, dim, seqlen = u.shape
    groups = B.shape[1]
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bd = B.repeat_interleave(dim // groups, dim=1)  # (batch, dim, N, L)
    Cd = C.repeat_interleave(dim // groups, dim=1)
    h = torch.zeros(batch, dim, A.shape[1], dtype=u.dtype) if initial_state is None else initial_state
    ys = []
    # unbind, not x[..., t]: autograd would scatter each step's gradient into a zero tensor of the whole input,
    # which makes the backward quadratic in L.
    steps = zip(dt.unbind(-1), u.unbind(-1), Bd.unbind(-1), Cd.unbind(-1), strict=True)
    for dt_t, u_t, B_t, C_t in steps:
        h = torch.exp(dt_t[..., None] * A) * h + (dt_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def make_inputs(batch, dim, dstate, seqlen, groups, *, dtype=torch.float32, device=DEVICE, has_z=True, has_d=True,
                has_bias=True, has_init=True, layout="contiguous", seed=0):
    """Random inputs in the given layout; B and C as the model passes them (a transposed x_proj view)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    def per_channel(scale=1.0):
        if layout == "channel_last":  # (B, L, D) memory read as (B, D, L), as in_proj's output is
            return randn(batch, seqlen, dim, scale=scale).to(dtype).transpose(1, 2)
        return randn(batch, dim, seqlen, scale=scale).to(dtype)

    u = per_channel()
    delta = per_channel(0.5)
    z = per_channel() if has_z else None
    # A spread from slow to fast decay, as S4D-real init gives: -(1..N) scaled.
    A = -(torch.rand(dim, dstate, generator=g) * 4 + 0.05).to(device)
    bc = randn(batch, seqlen, groups, 2, dstate).to(dtype)  # x_proj output; B and C are views into it
    B = bc[:, :, :, 0].permute(0, 2, 3, 1)  # (batch, groups, N, L), stride along L = groups * 2N
    C = bc[:, :, :, 1].permute(0, 2, 3, 1)
    D = randn(dim) if has_d else None
    delta_bias = randn(dim, scale=0.5) if has_bias else None
    h0 = randn(batch, dim, dstate) if has_init else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=h0)


def rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    assert torch.isfinite(out).all(), "non-finite values (an element no kernel wrote?)"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def check_against_oracle(inputs, *, backend, delta_softplus=True, tol=None, chunk_len=None, grad_final=True):
    """Run the op and the float64 oracle on the same inputs; compare y, final state and every gradient."""
    names = [k for k, v in inputs.items() if v is not None]
    leaves = {k: inputs[k].detach().clone().requires_grad_() for k in names}
    args = {k: leaves.get(k) for k in inputs}
    if backend == "reference" and chunk_len is not None:
        y, h = selective_scan_ref(**args, delta_softplus=delta_softplus, return_final_state=True, chunk_len=chunk_len)
    else:
        y, h = selective_scan(**args, delta_softplus=delta_softplus, return_final_state=True, backend=backend)
    assert y.dtype == inputs["u"].dtype and y.shape == inputs["u"].shape
    assert h.dtype == torch.float32 and h.shape == (y.shape[0], y.shape[1], inputs["A"].shape[1])

    ref_leaves = {k: inputs[k].detach().double().cpu().requires_grad_() for k in names}
    y_ref, h_ref = naive_scan(**{k: ref_leaves.get(k) for k in inputs}, delta_softplus=delta_softplus)

    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    dh = torch.randn(h.shape, generator=g, dtype=torch.float64) if grad_final else None
    if grad_final:
        got = torch.autograd.grad((y, h), [leaves[k] for k in names], (dy.to(y), dh.to(h)))
        want = torch.autograd.grad((y_ref, h_ref), [ref_leaves[k] for k in names], (dy, dh))
    else:
        got = torch.autograd.grad(y, [leaves[k] for k in names], dy.to(y))
        want = torch.autograd.grad(y_ref, [ref_leaves[k] for k in names], dy)

    for k in names:  # the backward may overwrite its own copies of the inputs, never the inputs
        assert torch.equal(leaves[k].detach(), inputs[k]), f"{k} changed"
    tol = TOLERANCE[inputs["u"].dtype] if tol is None else tol
    errors = {"y": rel_err(y, y_ref), "final_state": rel_err(h, h_ref)}
    errors.update({f"d{k}": rel_err(a, b) for k, a, b in zip(names, got, want, strict=True)})
    if "delta_bias" in names:
        # d delta_bias sums ddelta over batch and time, where terms cancel: judge its error against the sum of
        # the terms' magnitudes (the error bound of a float sum), not against the small sum itself.
        ddelta_ref, dbias_ref = want[names.index("delta")], want[names.index("delta_bias")]
        scale = ddelta_ref.abs().sum((0, 2)).norm()
        dbias = got[names.index("delta_bias")].double().cpu()
        errors["ddelta_bias"] = ((dbias - dbias_ref).norm() / scale).item()
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"errors above {tol}: {bad} (all: {errors})"


# Lengths 1, 7, 63, 500 and 2049 with non-power-of-two widths; each case toggles the optional inputs so that
# together they cover with and without z, D, delta_bias, softplus, initial state, and groups 1 and 2.
CASES = [
    # (batch, dim, N, L, groups, has_z, has_d, has_bias, softplus, has_init)
    (1, 3, 4, 1, 1, True, True, True, True, True),
    (2, 6, 5, 7, 2, True, True, True, True, True),
    (1, 5, 16, 63, 1, False, True, False, False, True),
    (1, 12, 3, 500, 2, True, False, True, True, False),
    (1, 40, 8, 500, 1, False, False, False, True, True),
    (1, 4, 2, 2049, 1, True, True, True, True, True),
]
# The interpreter runs every program step by step, so CPU time grows with batch x groups x channel blocks x L:
# the long cases keep that product small.


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("case", CASES, ids=[f"b{c[0]}d{c[1]}n{c[2]}L{c[3]}g{c[4]}" for c in CASES])
def test_matches_float64_oracle(backend, case):
    batch, dim, dstate, seqlen, groups, has_z, has_d, has_bias, softplus, has_init = case
    inputs = make_inputs(batch, dim, dstate, seqlen, groups, has_z=has_z, has_d=has_d, has_bias=has_bias,
                         has_init=has_init, seed=seqlen)
    check_against_oracle(inputs, backend=backend, delta_softplus=softplus)


def test_channel_last_strided_inputs():
    """The model's layout: u, delta, z are (B, L, D) memory and B, C transposed x_proj views; no copies needed."""
    inputs = make_inputs(1, 20, 16, 130, 1, layout="channel_last", seed=3)
    assert inputs["u"].stride(1) == 1 and inputs["B"].stride(2) == 1
    check_against_oracle(inputs, backend="triton")


# Switches of _copies_pay, and the layout copies they make at N 16 and 33 (u, delta, z, then dy; the forward adds
# y's copy back): the forward's chunks must serve a backward that runs on copies with the channel-last blocks
# (shorter tiles than the time-contiguous ones at N 16).
COPY_RULES = {  # rule: (_TUNING entries, {N: copies})
    "as-given": ({"transpose_fwd": 0, "transpose_bwd": 0}, {16: 0, 33: 0}),
    "backward-copies": ({"transpose_fwd": 0}, {16: 4, 33: 4}),
    "backward-copies-from-n-17": ({"transpose_fwd": 0, "transpose_bwd_min_n": 17}, {16: 0, 33: 4}),
    "forward-and-backward-copies": ({"transpose_bwd": 0, "transpose_fwd_max_n": 64}, {16: 8, 33: 8}),
    "default": ({}, {16: 8, 33: 4}),
}


@pytest.mark.parametrize("rule", list(COPY_RULES))
@pytest.mark.parametrize("dstate", [16, 33])
def test_time_contiguous_inputs_on_channel_last_copies(monkeypatch, rule, dstate):
    """Time-contiguous inputs may run on channel-last copies (``_copies_pay``); results must not depend on it."""
    tuning, copies = COPY_RULES[rule]
    for key, value in tuning.items():
        monkeypatch.setitem(scan_interface._TUNING, key, value)
    calls = []

    def counted_relayout(x, channel_last, backend="auto"):
        calls.append(channel_last)
        return relayout(x, channel_last, backend)

    monkeypatch.setattr(scan_interface, "relayout", counted_relayout)
    inputs = make_inputs(1, 5, dstate, 70, 1, seed=10)
    assert inputs["u"].stride(2) == 1
    check_against_oracle(inputs, backend="triton")
    assert len(calls) == copies[dstate]


@pytest.mark.parametrize("tiles", [(1, 4), (4, 2)], ids=["fwd1-rev4", "fwd4-rev2"])
def test_backward_kernels_with_their_own_tile_lengths(monkeypatch, tiles):
    """The backward's forward-in-time and reverse-in-time kernels may walk different tile lengths; beta, which
    the first writes per step and the second reads, and the chunk boundaries must still line up (ragged L)."""
    monkeypatch.setitem(scan_interface._TUNING, "t_tile_bwd", tiles[0])
    monkeypatch.setitem(scan_interface._TUNING, "t_tile_rev", tiles[1])
    inputs = make_inputs(1, 6, 4, 45, 1, layout="channel_last", seed=8)
    check_against_oracle(inputs, backend="triton")


def test_without_final_state_gradient():
    inputs = make_inputs(2, 7, 4, 40, 1, seed=4)
    check_against_oracle(inputs, backend="triton", grad_final=False)


def test_reference_chunk_recompute_path():
    """Many short chunks: the reference's per-chunk recompute and carried state gradient across chunks."""
    inputs = make_inputs(2, 6, 5, 103, 2, seed=5)
    check_against_oracle(inputs, backend="reference", chunk_len=8)


@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_reference_in_either_layout(layout):
    """The reference's outputs and gradients follow the inputs' layout (channel-last ones are copied row by row)."""
    inputs = make_inputs(2, 6, 4, 37, 2, device=torch.device("cpu"), layout=layout, seed=3)
    check_against_oracle(inputs, backend="reference", chunk_len=8)
    y = selective_scan_ref(**inputs, delta_softplus=True)
    assert (y.stride(1) == 1) == (layout == "channel_last")


def test_reference_without_gradients_matches_oracle():
    """Under no_grad (embedding, scoring) the reference keeps no chunk states; the results are the same."""
    inputs = make_inputs(3, 10, 4, 45, 1, device=torch.device("cpu"), seed=4)
    with torch.no_grad():
        y, h = selective_scan_ref(**inputs, delta_softplus=True, return_final_state=True, chunk_len=8)
    y_ref, h_ref = naive_scan(**{k: None if v is None else v.double() for k, v in inputs.items()},
                              delta_softplus=True)
    assert rel_err(y, y_ref) < TOLERANCE[torch.float32]
    assert rel_err(h, h_ref) < TOLERANCE[torch.float32]


def test_reference_chunks_stay_long_with_wide_batches():
    """The element budget alone gave 1-2 steps per chunk at batch x dim x N of 2^18 (32 windows of the 7M model)."""
    from dna_mamba.kernels.selective_scan.reference import default_chunk_len

    assert default_chunk_len(32, 512, 16, 1024) == 8
    assert default_chunk_len(1, 512, 16, 1 << 20) == 64
    assert default_chunk_len(32, 512, 16, 5) == 5


def test_segments_with_carried_state_equal_one_pass():
    """Scanning in two segments with the state carried (and backpropagated) equals one pass, for both backends."""
    for backend in ("triton", "reference"):
        inputs = make_inputs(1, 9, 4, 90, 1, seed=6)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
        args = {k: leaves.get(k) for k in inputs}
        y_full, h_full = selective_scan(**args, delta_softplus=True, return_final_state=True, backend=backend)
        full_grads = torch.autograd.grad((y_full.square().sum() + h_full.sum()), list(leaves.values()))

        cut = 37

        def part(t, sl):
            return None if t is None else t[..., sl]

        seg = [slice(0, cut), slice(cut, None)]
        per_seq = ("u", "delta", "z", "B", "C")
        state = args["initial_state"]
        ys = []
        for sl in seg:
            seg_args = {k: (part(v, sl) if k in per_seq else v) for k, v in args.items()}
            seg_args["initial_state"] = state
            y, state = selective_scan(**seg_args, delta_softplus=True, return_final_state=True, backend=backend)
            ys.append(y)
        y_seg = torch.cat(ys, dim=-1)
        seg_grads = torch.autograd.grad((y_seg.square().sum() + state.sum()), list(leaves.values()))
        assert rel_err(y_seg, y_full) < 1e-5 and rel_err(state, h_full) < 1e-5
        for name, a, b in zip(leaves, seg_grads, full_grads, strict=True):
            assert rel_err(a, b) < 1e-5, (backend, name)


def test_auto_backend_on_cpu_uses_reference():
    inputs = make_inputs(1, 4, 3, 10, 1, device=torch.device("cpu"), seed=7)
    y_auto = selective_scan(**inputs, delta_softplus=True)
    y_ref = selective_scan(**inputs, delta_softplus=True, backend="reference")
    assert torch.equal(y_auto, y_ref)


def _valid_cpu():
    return make_inputs(2, 4, 3, 10, 2, device=torch.device("cpu"), seed=8)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(u=a["u"][0]), "u must be"),
        (lambda a: a.update(delta=a["delta"][..., :-1]), "delta must have u's shape"),
        (lambda a: a.update(z=a["z"][:, :3]), "z must have u's shape"),
        (lambda a: a.update(A=a["A"].double()), "A must be float32"),
        (lambda a: a.update(A=a["A"][:3]), "A must be"),
        (lambda a: a.update(A=torch.zeros(4, 65)), r"N must be in \[1, 64\]"),
        (lambda a: a.update(B=a["B"][..., :-1]), "B must be"),
        (lambda a: a.update(C=a["C"][:, :1]), "B and C must have the same groups"),
        (lambda a: a.update(B=a["B"][:, :1].expand(2, 3, 3, 10), C=a["C"][:, :1].expand(2, 3, 3, 10)), "divisible"),
        (lambda a: a.update(D=a["D"][:3]), "D must be"),
        (lambda a: a.update(delta_bias=a["delta_bias"][None]), "delta_bias must be"),
        (lambda a: a.update(initial_state=a["initial_state"][..., :2]), "initial_state must be"),
        (lambda a: a.update(u=a["u"].long()), "u must be float32, float16 or bfloat16"),
        (lambda a: a.update(D=a["D"].to("meta")), "one device"),
        (lambda a: a.update(backend="cuda"), "backend must be"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(change, match):
    args = _valid_cpu()
    change(args)
    with pytest.raises(ValueError, match=match):
        selective_scan(**args, delta_softplus=True)


# ---------------------------------------------------------------------------------------------- GPU tier


def _time_split_check(inputs, *, tail, tol):
    """Long-sequence check without a float64 pass over all of L: run Triton over [0, L - tail) to get the state,
    then the float64 oracle over the last ``tail`` steps from it; compare with the full-length Triton run."""
    y, h = selective_scan(**inputs, delta_softplus=True, return_final_state=True)
    head = {k: (v[..., :-tail] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
    _, h_head = selective_scan(**head, delta_softplus=True, return_final_state=True)
    tail_in = {k: (v[..., -tail:] if k in ("u", "delta", "z", "B", "C") else v) for k, v in inputs.items()}
    tail_in["initial_state"] = h_head
    tail64 = {k: None if v is None else v.detach().double().cpu() for k, v in tail_in.items()}
    y_ref, h_ref = naive_scan(**tail64, delta_softplus=True)
    assert rel_err(y[..., -tail:], y_ref) < tol
    assert rel_err(h, h_ref) < tol


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "channel_last"])
def test_gpu_real_shape_against_oracle(dtype, layout):
    inputs = make_inputs(2, 256, 16, 3000, 1, dtype=dtype, layout=layout, seed=11)
    check_against_oracle(inputs, backend="triton")


@needs_gpu
@pytest.mark.gpu
def test_gpu_one_long_chunk(monkeypatch):
    """Large batch x dim runs each sequence as one chunk; the backward's carried sums must stay accurate."""
    inputs = make_inputs(1, 64, 16, 1 << 15, 1, dtype=torch.float32, seed=15)
    monkeypatch.setitem(scan_interface._TUNING, "chunk_len", 1 << 15)
    check_against_oracle(inputs, backend="triton", tol=1e-4)


@needs_gpu
@pytest.mark.gpu
def test_gpu_one_million_steps():
    inputs = make_inputs(1, 64, 16, 1 << 20, 1, dtype=torch.bfloat16, layout="channel_last", seed=12)
    _time_split_check(inputs, tail=512, tol=TOLERANCE[torch.bfloat16])


@needs_gpu
@pytest.mark.gpu
def test_gpu_more_than_2_pow_31_elements():
    """u has 2080 * 2^20 > 2^31 elements: the last channels must match a run on just those channels."""
    dim, seqlen = 2080, 1 << 20
    inputs = make_inputs(1, dim, 16, seqlen, 1, dtype=torch.bfloat16, has_init=False, seed=13)
    assert inputs["u"].numel() > 2**31
    y = selective_scan(**inputs, delta_softplus=True)
    last = slice(dim - 16, dim)
    small = {k: v for k, v in inputs.items()}
    for k in ("u", "delta", "z"):
        small[k] = inputs[k][:, last].contiguous()
    for k in ("A", "D", "delta_bias"):
        small[k] = inputs[k][last].contiguous()
    y_small = selective_scan(**small, delta_softplus=True)
    # Chunking differs between the two calls, so allow fp32 reassociation and one bf16 rounding; a wrong
    # (wrapped 32-bit) offset would read other channels and give errors of order one.
    assert rel_err(y[:, last], y_small) < 1e-2


@needs_gpu
@pytest.mark.gpu
def test_gpu_dB_dC_bit_identical_across_runs():
    inputs = make_inputs(1, 512, 16, 1 << 16, 1, dtype=torch.bfloat16, layout="channel_last", seed=14)
    results = []
    for _ in range(3):
        leaves = {k: inputs[k].detach().clone().requires_grad_() for k in ("B", "C")}
        args = dict(inputs, **leaves)
        y = selective_scan(**args, delta_softplus=True)
        results.append(torch.autograd.grad(y.float().square().sum(), [leaves["B"], leaves["C"]]))
    for dB, dC in results[1:]:
        assert torch.equal(dB, results[0][0]) and torch.equal(dC, results[0][1])
