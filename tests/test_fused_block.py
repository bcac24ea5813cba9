"""The fused block (norm -> in_proj -> conv -> x_proj -> dt -> scan -> out_proj -> + x as one node) against the
step-by-step path.

On a CPU the Triton kernels run through the interpreter (conftest sets TRITON_INTERPRET=1), so these tests run
the same kernels and the same recomputing backward as CUDA does.
"""

import pytest
import torch
import torch.nn.functional as F

from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.model.mamba import Block, LayerState
from dna_mamba.model.segments import segmented_lm_loss

pytest.importorskip("triton")


def _block(d_model=12, d_state=4, proj_bias=False, conv_bias=True, residual_in_fp32=True, seed=0) -> Block:
    torch.manual_seed(seed)
    config = DnaMambaConfig(d_model=d_model, n_layer=1, d_state=d_state, proj_bias=proj_bias, conv_bias=conv_bias,
                            residual_in_fp32=residual_in_fp32)
    block = Block(config)
    with torch.no_grad():  # move every parameter off its init (zero biases, unit norm weight) so none is special
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return block


def _run(block: Block, fused: bool, x, state: LayerState | None, dout, dconv, dssm):
    """Forward and backward of one path; returns outputs and the gradient of every leaf."""
    block.fused = fused
    block.zero_grad(set_to_none=True)
    leaves = [x] + ([] if state is None else [state.conv, state.ssm])
    for t in leaves:
        t.grad = None
    out, new_state = block(x, state, return_state=True)
    loss = (out * dout).sum() + (new_state.conv * dconv).sum() + (new_state.ssm * dssm).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    grads.update({f"input {i}": t.grad.clone() for i, t in enumerate(leaves)})
    return (out.detach(), new_state.conv.detach(), new_state.ssm.detach()), grads


def _count_pieces(monkeypatch, piece_tokens: int) -> list:
    from dna_mamba.model import fused_block

    calls = []
    scan_backward = fused_block.scan_backward

    def counting_backward(*args, **kwargs):
        calls.append(args[0].shape[-1])  # steps of the piece
        return scan_backward(*args, **kwargs)

    monkeypatch.setattr(fused_block, "scan_backward", counting_backward)
    monkeypatch.setattr(fused_block, "PIECE_TOKENS", piece_tokens)
    return calls


@pytest.mark.parametrize(
    "batch, length, with_state, proj_bias, conv_bias, residual_in_fp32, piece_tokens",
    [
        (1, 1, False, False, True, True, None),
        (2, 37, True, True, True, True, 16),
        (1, 70, True, False, False, False, 16),
        (2, 45, False, False, True, True, 32),
        (1, 50, True, True, True, False, None),
    ],
)
def test_fused_block_matches_step_by_step(monkeypatch, batch, length, with_state, proj_bias, conv_bias,
                                          residual_in_fp32, piece_tokens):
    """Outputs, carried states and the gradient of every parameter, the input and the initial states, with the
    sequence in pieces (last first in the backward, conv and scan state gradients handed back) or in one."""
    calls = _count_pieces(monkeypatch, piece_tokens)
    block = _block(proj_bias=proj_bias, conv_bias=conv_bias, residual_in_fp32=residual_in_fp32)
    cfg = block.mixer.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, cfg.d_model, generator=g, requires_grad=True)
    state = None
    if with_state:
        state = LayerState(torch.randn(batch, cfg.d_inner, cfg.d_conv - 1, generator=g).requires_grad_(),
                           torch.randn(batch, cfg.d_inner, cfg.d_state, generator=g).requires_grad_())
    dout = torch.randn(batch, length, cfg.d_model, generator=g)
    dconv = torch.randn(batch, cfg.d_inner, cfg.d_conv - 1, generator=g)
    dssm = torch.randn(batch, cfg.d_inner, cfg.d_state, generator=g)
    fused, grads_fused = _run(block, True, x, state, dout, dconv, dssm)
    reference, grads_ref = _run(block, False, x, state, dout, dconv, dssm)
    for name, a, b in zip(["out", "conv_final", "ssm_final"], fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=name)
    assert grads_fused.keys() == grads_ref.keys()
    for name in grads_ref:
        torch.testing.assert_close(grads_fused[name], grads_ref[name], rtol=5e-4, atol=5e-5, msg=f"d {name}")
    expected_pieces = 1 if piece_tokens is None else -(-length // max(1, piece_tokens // batch))
    assert len(calls) == expected_pieces and sum(calls) == length, calls


@pytest.mark.parametrize("frozen", [("norm.weight", "mixer.conv_bias"), ("mixer.in_proj.weight", "mixer.A_log")])
def test_fused_block_with_frozen_parameters_and_input(monkeypatch, frozen):
    """Partly frozen blocks (fine-tuning): the gradients that are wanted still match, the others stay None."""
    _count_pieces(monkeypatch, 16)
    block = _block(proj_bias=True)
    for name, p in block.named_parameters():
        p.requires_grad_(name not in frozen)
    x = torch.randn(2, 30, block.mixer.config.d_model, generator=torch.Generator().manual_seed(6))  # no grad
    grads = []
    for fused in (True, False):
        block.fused = fused
        block.zero_grad(set_to_none=True)
        out, _ = block(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append({name: p.grad for name, p in block.named_parameters()})
    for name, grad in grads[1].items():
        if name in frozen:
            assert grads[0][name] is None and grad is None, name
        else:
            torch.testing.assert_close(grads[0][name], grad, rtol=5e-4, atol=5e-5, msg=name)


def test_fused_block_with_a_carried_state_that_wants_no_gradient(monkeypatch):
    """A detached carried state (truncated backpropagation across chunks): it still shapes the outputs and the
    parameter gradients of every piece, and gets no gradient itself."""
    calls = _count_pieces(monkeypatch, 16)
    block = _block()
    cfg = block.mixer.config
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 29, cfg.d_model, generator=g)
    state = LayerState(torch.randn(2, cfg.d_inner, cfg.d_conv - 1, generator=g),
                       torch.randn(2, cfg.d_inner, cfg.d_state, generator=g))
    dout = torch.randn(2, 29, cfg.d_model, generator=g)
    grads = []
    for fused in (True, False):
        block.fused = fused
        block.zero_grad(set_to_none=True)
        out, _ = block(x, state, return_state=True)
        (out * dout).sum().backward()
        grads.append({name: p.grad for name, p in block.named_parameters()})
    assert len(calls) == 4  # pieces of 8 steps at batch 2
    assert state.conv.grad is None and state.ssm.grad is None
    for name, grad in grads[1].items():
        torch.testing.assert_close(grads[0][name], grad, rtol=5e-4, atol=5e-5, msg=name)


@pytest.mark.parametrize("which", ["conv", "ssm"])
def test_fused_block_refuses_a_state_of_the_wrong_shape(which):
    block = _block()
    block.fused = True
    cfg = block.mixer.config
    x = torch.randn(2, 10, cfg.d_model)
    conv = torch.zeros(2, cfg.d_inner, cfg.d_conv - 1)
    ssm = torch.zeros(2, cfg.d_inner, cfg.d_state)
    if which == "conv":
        conv = torch.zeros(2, cfg.d_inner, cfg.d_conv)
    else:
        ssm = torch.zeros(1, cfg.d_inner, cfg.d_state)
    with pytest.raises(ValueError, match=f"{which}_state must be .* got"):
        block(x, LayerState(conv, ssm))


def test_fused_block_saves_only_its_input():
    """The point of the node: of the per-position tensors only the block input x is kept for the backward."""
    block = _block(d_model=16)
    x = torch.randn(2, 64, 16, requires_grad=True)
    per_position = 2 * 64 * 16  # at least one value per position and model channel

    def saved_shapes(fused: bool) -> list:
        block.fused = fused
        shapes = []

        def pack(t):
            if t.numel() >= per_position:
                shapes.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            block(x)
        return shapes

    assert saved_shapes(True) == [tuple(x.shape)]
    assert len(saved_shapes(False)) >= 5  # normed input, xz, u, delta, y, ... in the step-by-step path


def test_scan_backward_returns_the_forward_output_when_asked():
    """The fused block takes y for out_proj's weight gradient from the scan's backward: it must be the forward's."""
    from dna_mamba.kernels.selective_scan.interface import scan_backward, scan_forward

    g = torch.Generator().manual_seed(2)
    batch, dim, n, length = 2, 6, 4, 41
    u, delta, z = (torch.randn(batch, length, dim, generator=g).transpose(1, 2) for _ in range(3))
    A = -torch.rand(dim, n, generator=g) - 0.5
    B, C = (torch.randn(batch, 1, n, length, generator=g) for _ in range(2))
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    for gate in (z, None):
        y, final, states, cfg = scan_forward(u, delta, A, B, C, D, gate, bias, None, True)
        y_again = torch.full_like(y, float("nan"))
        scan_backward(u, delta, A, B, C, D, gate, bias, None, states, cfg, True, torch.randn_like(y), None,
                      y_out=y_again)
        torch.testing.assert_close(y_again, y, rtol=1e-5, atol=1e-6)


def _model(fused: bool) -> DnaMambaLM:
    torch.manual_seed(0)
    model = DnaMambaLM(DnaMambaConfig(d_model=16, n_layer=2, d_state=4))
    for layer in model.layers:
        layer.fused = fused
    return model


def test_model_with_fused_blocks_matches_step_by_step_path():
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


def test_reused_input_buffer_receives_the_input_gradient():
    """reuse_input: the backward writes dx over the block's input (an intermediate of the caller's), piece by
    piece, and the gradients are those of a separate buffer."""
    from dna_mamba.model import fused_block

    block = _block()
    block.fused = True
    leaf = torch.randn(2, 40, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    dout = torch.randn(2, 40, 12, generator=torch.Generator().manual_seed(2))
    results = []
    for reuse in (False, True):
        block.zero_grad(set_to_none=True)
        leaf.grad = None
        x = leaf * 1.5  # the block's input, a tensor nobody else reads
        fused_block.PIECE_TOKENS, old = 24, fused_block.PIECE_TOKENS  # 4 pieces of 12 steps at batch 2
        try:
            out, _ = block(x, reuse_input=reuse)
            (out * dout).sum().backward()
        finally:
            fused_block.PIECE_TOKENS = old
        results.append((leaf.grad.clone(), {n: p.grad.clone() for n, p in block.named_parameters()}, x.detach()))
    (grad_sep, params_sep, x_sep), (grad_reuse, params_reuse, x_reuse) = results
    torch.testing.assert_close(grad_reuse, grad_sep, rtol=0, atol=0)
    for name in params_sep:
        torch.testing.assert_close(params_reuse[name], params_sep[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(x_sep, leaf.detach() * 1.5)  # left alone without reuse
    torch.testing.assert_close(x_reuse, grad_sep / 1.5)  # holds d loss / dx with it


def test_model_reuses_its_residual_stream_only_when_nobody_sees_it(monkeypatch):
    """The model lets fused blocks overwrite their inputs only when no hidden state or hook hands them out."""
    from dna_mamba.model import mamba

    seen = []
    fused = mamba.mamba_block
    monkeypatch.setattr(mamba, "mamba_block", lambda *args: seen.append(args[-1]) or fused(*args))
    ids = torch.randint(0, 4, (1, 20), generator=torch.Generator().manual_seed(5))
    model = _model(True)
    model(ids).logits.sum().backward()
    assert seen == [True, True]
    seen.clear()
    model(ids, output_hidden_states=True).logits.sum().backward()
    assert seen == [False, False]
    seen.clear()
    kept = []
    handle = model.layers[1].register_forward_hook(lambda module, inputs, output: kept.append(inputs[0]))
    model(ids).logits.sum().backward()
    handle.remove()
    assert seen == [False, False]
    with torch.no_grad():
        copy = model(ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(kept[0].detach(), copy)  # what the hook kept was not overwritten
    seen.clear()
    with torch.no_grad():
        model(ids)
    assert seen == [False, False]  # no backward to come: nothing to reuse


def test_activation_checkpointing_leaves_fused_blocks_alone(monkeypatch):
    """A fused block keeps only its input, as a checkpoint would: checkpointing it would only run it twice."""
    from dna_mamba.model import mamba

    calls = []
    fused = mamba.mamba_block
    monkeypatch.setattr(mamba, "mamba_block", lambda *args: calls.append(1) or fused(*args))
    ids = torch.randint(0, 4, (1, 20), generator=torch.Generator().manual_seed(5))
    for use_fused, forwards in ((True, 2), (False, 0)):
        calls.clear()
        model = _model(use_fused)
        model.gradient_checkpointing = True
        model(ids).logits.sum().backward()
        assert len(calls) == forwards  # one per block, none recomputed
        assert all(p.grad is not None for p in model.parameters())


def test_segmented_loss_through_fused_blocks_equals_one_pass():
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


class LowRankLinear(torch.nn.Module):
    """A LoRA-style wrapper: the base layer plus a trainable low-rank update, exposing the base weight as `weight`
    the way adapter libraries do. A path that reads `weight` instead of calling the module drops the update."""

    def __init__(self, base: torch.nn.Linear, rank: int = 2):
        super().__init__()
        self.base = base
        self.down = torch.nn.Linear(base.in_features, rank, bias=False)
        self.up = torch.nn.Linear(rank, base.out_features, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))


def _hook_mixer_out(block: Block, seen: list):
    return block.mixer.out_proj.register_forward_hook(lambda module, args, out: seen.append(out.shape))


@pytest.mark.parametrize("change", ["hook out_proj", "hook norm", "pre-hook mixer", "backward hook in_proj",
                                    "wrap in_proj", "wrap out_proj", "global hook"])
def test_forced_fused_block_refuses_what_it_would_skip(change):
    """The fused node reads weights and calls no submodule: with fused=True, anything it would silently skip is a
    ValueError naming it (fused=None runs such a block step by step instead: the GPU test below)."""
    block = _block()
    block.fused = True
    handles = []
    if change == "hook out_proj":
        handles.append(_hook_mixer_out(block, []))
    elif change == "hook norm":
        handles.append(block.norm.register_forward_hook(lambda *a: None))
    elif change == "pre-hook mixer":
        handles.append(block.mixer.register_forward_pre_hook(lambda *a: None))
    elif change == "backward hook in_proj":
        handles.append(block.mixer.in_proj.register_full_backward_hook(lambda *a: None))
    elif change == "wrap in_proj":
        block.mixer.in_proj = LowRankLinear(block.mixer.in_proj)
    elif change == "wrap out_proj":
        block.mixer.out_proj = LowRankLinear(block.mixer.out_proj)
    elif change == "global hook":
        handles.append(torch.nn.modules.module.register_module_forward_hook(lambda *a: None))
    x = torch.randn(1, 9, 12)
    expected = {"hook out_proj": "mixer.out_proj", "hook norm": "norm", "pre-hook mixer": "mixer",
                "backward hook in_proj": "mixer.in_proj", "wrap in_proj": "in_proj is a LowRankLinear",
                "wrap out_proj": "out_proj is a LowRankLinear", "global hook": "global module hooks"}[change]
    try:
        with pytest.raises(ValueError, match=expected):
            block(x)
    finally:
        for handle in handles:
            handle.remove()
    if handles:
        out, _ = block(x)  # the hooks are gone: the fused node runs again
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["x_proj", "dt_proj"])
def test_wrapped_weight_only_projection_is_an_error_on_every_path(name):
    """x_proj and dt_proj are read as weights on both paths, so an adapter there would be dropped: a ValueError in the
    step-by-step forward, the fused node and the one-token step, not a model that silently ignores it."""
    torch.manual_seed(0)
    model = DnaMambaLM(DnaMambaConfig(d_model=12, n_layer=2, d_state=4))
    mixer = model.layers[1].mixer
    setattr(mixer, name, LowRankLinear(getattr(mixer, name)))
    tokens = torch.randint(0, 4, (1, 10))
    with pytest.raises(ValueError, match=f"mixer.{name} is a LowRankLinear"):
        model(tokens)
    with pytest.raises(ValueError, match=f"mixer.{name} is a LowRankLinear"):
        model.step(tokens[:, 0], model.allocate_state(1))
    model.layers[1].fused = True
    with pytest.raises(ValueError, match=f"mixer.{name} is a LowRankLinear"):
        model(tokens)


def test_hook_on_a_weight_only_projection_is_warned_about_once(caplog):
    from dna_mamba.model import mamba

    block = _block()
    handle = block.mixer.x_proj.register_forward_hook(lambda *a: None)
    mamba._warned.clear()
    try:
        with caplog.at_level("WARNING", logger="dna_mamba.model.mamba"):
            block(torch.randn(1, 5, 12))
            block(torch.randn(1, 5, 12))
    finally:
        handle.remove()
    warnings = [r.getMessage() for r in caplog.records if "mixer.x_proj" in r.getMessage()]
    assert len(warnings) == 1 and "do not fire" in warnings[0]


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("autocast", [False, True])
def test_gpu_block_fused_matches_step_by_step(monkeypatch, autocast):
    """A real-width block at 2 x 2^17 tokens on CUDA: the fused node in four pieces, against the op-by-op path on
    the same kernels."""
    from dna_mamba.model import fused_block

    monkeypatch.setattr(fused_block, "PIECE_TOKENS", 2**16)

    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        block = Block(DnaMambaConfig(d_model=256, n_layer=1, d_state=16)).cuda()
        block.fused = fused
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


@pytest.mark.gpu
@needs_gpu
def test_gpu_blocks_with_hooks_or_adapters_run_step_by_step(caplog):
    """On CUDA (fused=None) a hook inside a block fires and an adapter on in_proj trains: such blocks run step by
    step, with one warning, and give the step-by-step path's outputs and gradients."""
    from dna_mamba.model import mamba

    torch.manual_seed(0)
    model = DnaMambaLM(DnaMambaConfig(d_model=64, n_layer=2, d_state=16)).cuda()
    model.layers[0].mixer.in_proj = LowRankLinear(model.layers[0].mixer.in_proj).cuda()
    seen = []
    handle = _hook_mixer_out(model.layers[1], seen)
    tokens = torch.randint(0, 4, (2, 300), device="cuda")
    mamba._warned.clear()
    results = []
    for fused in (None, False):
        for layer in model.layers:
            layer.fused = fused
        model.zero_grad(set_to_none=True)
        with caplog.at_level("WARNING", logger="dna_mamba.model.mamba"):
            logits = model(tokens).logits
        logits.square().mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    handle.remove()
    assert len(seen) == 2  # once per forward, fused=None included
    assert sum("running blocks step by step" in r.getMessage() for r in caplog.records) == 2  # one per reason
    (auto_logits, auto_grads), (ref_logits, ref_grads) = results
    torch.testing.assert_close(auto_logits, ref_logits)
    adapter = "layers.0.mixer.in_proj.up.weight"
    assert auto_grads[adapter].abs().sum() > 0
    for name in ref_grads:
        torch.testing.assert_close(auto_grads[name], ref_grads[name], msg=name)
