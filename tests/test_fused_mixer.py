"""The fused mixer path (conv -> x_proj -> dt -> scan as one node) against the step-by-step path.

On a CPU the Triton kernels run through the interpreter (conftest sets TRITON_INTERPRET=1), so these tests run
the same kernels and the same recomputing backward as CUDA does.
"""

import pytest
import torch
import torch.nn.functional as F
from dna_mamba.kernels import causal_conv1d, selective_scan

from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.model.fused_mixer import mamba_inner
from dna_mamba.model.segments import segmented_lm_loss

pytest.importorskip("triton")


def _unfused(xz, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, dt_bias, A, D, dt_rank, d_state,
             conv_state, ssm_state):
    """The same maths from the reference kernels, op by op (the model's CPU path)."""
    x, z = xz.transpose(1, 2).chunk(2, dim=1)
    u, conv_final = causal_conv1d(x, conv_weight, conv_bias, activation="silu", initial_state=conv_state,
                                  return_final_state=True, backend="reference")
    dt_low, b, c = torch.split(F.linear(u.transpose(1, 2), x_proj_weight), [dt_rank, d_state, d_state], dim=-1)
    delta = F.linear(dt_low, dt_proj_weight).transpose(1, 2)
    y, ssm_final = selective_scan(u, delta, A, b.transpose(1, 2).unsqueeze(1), c.transpose(1, 2).unsqueeze(1), D=D,
                                  z=z, delta_bias=dt_bias, delta_softplus=True, initial_state=ssm_state,
                                  return_final_state=True, backend="reference")
    return y, conv_final, ssm_final


def _inputs(batch, length, d_inner, d_state, dt_rank, d_conv, with_state, with_bias, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float().requires_grad_()

    return dict(
        xz=rand(batch, length, 2 * d_inner),
        conv_weight=rand(d_inner, d_conv, scale=0.5),
        conv_bias=rand(d_inner, scale=0.1) if with_bias else None,
        x_proj_weight=rand(dt_rank + 2 * d_state, d_inner, scale=0.3),
        dt_proj_weight=rand(d_inner, dt_rank, scale=0.5),
        dt_bias=rand(d_inner, scale=0.5),
        A=(-torch.rand(d_inner, d_state, generator=g) - 0.5).requires_grad_(),
        D=rand(d_inner),
        dt_rank=dt_rank,
        d_state=d_state,
        conv_state=rand(batch, d_inner, d_conv - 1) if with_state else None,
        ssm_state=rand(batch, d_inner, d_state) if with_state else None,
    )


def _check_every_gradient(args: dict, seed: int):
    """mamba_inner against the op-by-op path: the gradient of every tensor input under one random upstream
    gradient must match. Returns both paths' outputs for the caller's own checks."""
    fused = mamba_inner(**args)
    reference = _unfused(**args)
    g = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(t.shape, generator=g) for t in reference]
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
    leaves = [args[k] for k in names]
    grads_fused = torch.autograd.grad(fused, leaves, upstream)
    grads_ref = torch.autograd.grad(reference, leaves, upstream)
    for name, a, b in zip(names, grads_fused, grads_ref, strict=True):
        assert a is not None, name
        torch.testing.assert_close(a, b, rtol=5e-4, atol=5e-5, msg=f"d {name}")
    return fused, reference


@pytest.mark.parametrize(
    "batch, length, d_inner, d_state, with_state, with_bias",
    [(1, 1, 8, 4, False, True), (2, 37, 12, 4, True, True), (1, 70, 24, 8, True, False), (2, 9, 6, 16, False, True)],
)
def test_mamba_inner_matches_unfused_outputs_and_every_gradient(batch, length, d_inner, d_state, with_state,
                                                                 with_bias):
    args = _inputs(batch, length, d_inner, d_state, dt_rank=3, d_conv=4, with_state=with_state, with_bias=with_bias)
    fused, reference = _check_every_gradient(args, seed=1)
    for name, a, b in zip(["y", "conv_final", "ssm_final"], fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("batch, length, with_state", [(1, 70, True), (2, 37, True), (1, 45, False)])
def test_backward_in_pieces_matches_unfused(monkeypatch, batch, length, with_state):
    """The backward over pieces of whole chunks (last first, conv and scan state gradients handed back) is exact."""
    from dna_mamba.model import fused_mixer

    calls = []
    scan_backward = fused_mixer.scan_backward

    def counting_backward(*args, **kwargs):
        calls.append(args[0].shape[-1])  # steps of the piece
        return scan_backward(*args, **kwargs)

    monkeypatch.setattr(fused_mixer, "scan_backward", counting_backward)
    monkeypatch.setattr(fused_mixer, "BACKWARD_PIECE_TOKENS", 16)
    args = _inputs(batch, length, 12, 4, dt_rank=3, d_conv=4, with_state=with_state, with_bias=True, seed=5)
    _check_every_gradient(args, seed=2)
    assert len(calls) >= 3 and sum(calls) == length, calls  # several pieces, covering the sequence once


def test_mamba_inner_saves_no_per_position_activation_but_xz():
    """The point of the node: of the (B, L, ...) tensors only xz is kept for the backward."""
    args = _inputs(2, 64, 16, 4, dt_rank=2, d_conv=4, with_state=False, with_bias=True)
    per_position = 2 * 64  # batch * length

    def saved_positions(fn):
        sizes = []

        def pack(t):
            if t.numel() >= per_position * 16:  # at least one value per position and channel
                sizes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(**args)
        return sizes

    assert saved_positions(mamba_inner) == [tuple(args["xz"].shape)]
    assert len(saved_positions(_unfused)) >= 3  # u, delta, z, ... in the step-by-step path


def _model(fused: bool) -> DnaMambaLM:
    torch.manual_seed(0)
    model = DnaMambaLM(DnaMambaConfig(d_model=16, n_layer=2, d_state=4))
    for layer in model.layers:
        layer.mixer.fused = fused
    return model


def test_model_with_fused_mixer_matches_step_by_step_path():
    ids = torch.randint(0, 4, (2, 50), generator=torch.Generator().manual_seed(3))
    results = []
    for fused in (True, False):
        model = _model(fused)
        out = model(ids, return_state=True)
        loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (out_f, grads_f), (out_r, grads_r) = results
    torch.testing.assert_close(out_f.logits, out_r.logits, rtol=1e-4, atol=1e-5)
    for a, b in zip(out_f.state, out_r.state, strict=True):
        torch.testing.assert_close(a.conv, b.conv)
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-4, atol=1e-5)
    for name in grads_r:
        torch.testing.assert_close(grads_f[name], grads_r[name], rtol=1e-3, atol=1e-5, msg=name)


def test_segmented_loss_through_fused_mixer_equals_one_pass():
    """Segments carry (conv, ssm) state through the fused node; its state gradients make them exact."""
    ids = torch.randint(0, 4, (1, 61), generator=torch.Generator().manual_seed(4))
    grads = []
    for segment_len in (61, 16):
        model = _model(True)
        nll, count = segmented_lm_loss(model, ids, segment_len)
        (nll / count).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-3, atol=1e-6, msg=name)


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("autocast", [False, True])
def test_gpu_block_fused_matches_step_by_step(monkeypatch, autocast):
    """A real-width block at 2 x 2^17 tokens on CUDA: the fused node, its backward in four pieces, against the
    op-by-op path on the same kernels."""
    from dna_mamba.model import fused_mixer
    from dna_mamba.model.mamba import Block

    monkeypatch.setattr(fused_mixer, "BACKWARD_PIECE_TOKENS", 2**16)

    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        block = Block(DnaMambaConfig(d_model=256, n_layer=1, d_state=16)).cuda()
        block.mixer.fused = fused
        x = torch.randn(2, 2**17, 256, device="cuda", requires_grad=True)
        torch.manual_seed(1)
        dout = torch.randn_like(x)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out, _ = block(x)
        out.backward(dout)
        results.append((out.float(), x.grad, {n: p.grad for n, p in block.named_parameters()}))
    (out_f, dx_f, grads_f), (out_r, dx_r, grads_r) = results

    def rel(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    tol = 2e-2 if autocast else 1e-4
    assert rel(out_f, out_r) < tol
    assert rel(dx_f, dx_r) < tol
    for name in grads_r:
        assert rel(grads_f[name], grads_r[name]) < tol, name
