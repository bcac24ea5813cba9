"""Segment checkpointing and per-layer activation checkpointing give the one-pass loss and gradients."""

import csv
import math

import pytest
import torch

from dna_mamba.errors import report_user_errors
from dna_mamba.lit.pretrain import lm_nll_sum, warmup_seq_len
from dna_mamba.model import DnaMambaConfig, DnaMambaLM
from dna_mamba.model.segments import segmented_lm_loss
from dna_mamba.tokenizer import N

L = 37  # prime: no segment length above 1 divides it


def tiny_model(seed: int = 0) -> DnaMambaLM:
    torch.manual_seed(seed)
    return DnaMambaLM(DnaMambaConfig(d_model=16, n_layer=2, d_state=4))


def tokens(batch: int = 2, length: int = L, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 4, (batch, length), generator=generator)
    ids[0, 5] = N  # an unscored target, and an N input the model must still read
    ids[1, -1] = N
    return ids


def one_pass_grads(model: DnaMambaLM, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    nll, count = lm_nll_sum(model(ids).logits, ids)
    nll.backward()
    return nll.detach(), count, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("segment_len", [1, 5, 12, 36, 37, 100])
def test_segmented_loss_and_gradients_equal_one_pass(segment_len):
    model, ids = tiny_model(), tokens()
    expected_nll, expected_count, expected = one_pass_grads(model, ids)

    model.zero_grad(set_to_none=True)
    nll, count = segmented_lm_loss(model, ids, segment_len)
    (nll * 0.5).backward()  # a non-unit upstream gradient must scale every parameter gradient
    assert int(count) == int(expected_count)
    torch.testing.assert_close(nll.detach(), expected_nll, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 0.5 * expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_gradients_accumulate_across_calls():
    model, ids = tiny_model(), tokens()
    _, _, expected = one_pass_grads(model, ids)
    model.zero_grad(set_to_none=True)
    for _ in range(2):  # gradient accumulation: two micro-batches add up
        segmented_lm_loss(model, ids, 8)[0].backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_without_grad_returns_the_loss_only():
    model, ids = tiny_model(), tokens()
    with torch.no_grad():
        nll, _ = segmented_lm_loss(model, ids, 10)
        expected, _ = lm_nll_sum(model(ids).logits, ids)
    assert not nll.requires_grad
    torch.testing.assert_close(nll, expected, rtol=1e-5, atol=1e-5)


def saved_float_bytes(fn) -> int:
    """Bytes of floating-point tensors autograd saves for the backward while ``fn`` runs."""
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.is_floating_point():
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_saved_memory_is_boundary_states_only():
    model = tiny_model()
    cfg = model.config
    state_bytes = 2 * cfg.n_layer * cfg.d_inner * (cfg.d_conv - 1 + cfg.d_state) * 4  # per boundary, batch 2
    # Four segments at two lengths: the same three boundary states, however long the segments are.
    for length, segment_len in [(65, 16), (257, 64)]:
        ids = tokens(length=length)
        saved = saved_float_bytes(lambda ids=ids, s=segment_len: segmented_lm_loss(model, ids, s))
        assert saved == 3 * state_bytes
    one_pass = saved_float_bytes(lambda: lm_nll_sum(model(ids).logits, ids))
    assert one_pass > 20 * saved


def test_rejects_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="segment_len"):
        segmented_lm_loss(model, tokens(), 0)
    with pytest.raises(ValueError, match="shape"):
        segmented_lm_loss(model, tokens()[0], 4)


def test_activation_checkpointing_gives_the_same_gradients():
    model, ids = tiny_model(), tokens()
    expected_nll, _, expected = one_pass_grads(model, ids)
    model.gradient_checkpointing = True
    nll, _, grads = one_pass_grads(model, ids)
    torch.testing.assert_close(nll, expected_nll)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-6, atol=1e-7, msg=name)
    # Segments and per-layer checkpointing compose: the recomputed segment is itself checkpointed per layer.
    model.zero_grad(set_to_none=True)
    segmented_lm_loss(model, ids, 10)[0].backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6, msg=name)


def test_activation_checkpointing_saves_less():
    model, ids = tiny_model(), tokens(length=257)
    plain = saved_float_bytes(lambda: model(ids).logits.sum())
    model.gradient_checkpointing = True
    checkpointed = saved_float_bytes(lambda: model(ids).logits.sum())
    assert checkpointed < plain / 2


def test_warmup_seq_len_schedule():
    lengths = [warmup_seq_len(step, 100, 8192, 0.5) for step in range(100)]
    # 1k, 2k, 4k in equal stages over the first 50 steps, then the full context; each divides 8192.
    assert lengths[:17] == [1024] * 17 and lengths[17:34] == [2048] * 17 and lengths[34:50] == [4096] * 16
    assert set(lengths[50:]) == {8192}
    assert warmup_seq_len(0, 100, 8192, 0.0) == 8192  # off
    assert warmup_seq_len(0, 100, 1024, 0.5) == 1024  # nothing shorter than the minimum
    assert warmup_seq_len(0, 100, 3000, 0.5) == 1500  # the halvings of a non-power-of-two context that divide it


def test_training_with_segments_checkpointing_and_seq_warmup(tmp_path):
    from test_train import TINY, run

    summary = run([*TINY, "context=2k", f"out_dir={tmp_path}", f"data.cache_dir={tmp_path / 'stores'}",
                   "trainer.max_steps=2", "trainer.log_every_n_steps=1", "task.run_baseline=false",
                   "task.export=false", "trainer.segment_len=300", "trainer.activation_checkpointing=true",
                   "trainer.seq_warmup_fraction=0.5"])
    assert summary["global_step"] == 2 and summary["val_bits_per_base"] < 5
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    seq_lens = [float(r["train/seq_len"]) for r in rows if r.get("train/seq_len")]
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert seq_lens == [1024.0, 2048.0]  # step 0 in the 1k stage, step 1 at the full 2k context
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_gpu_out_of_memory_names_the_settings_to_change(capsys):
    with pytest.raises(SystemExit) as exit_info, report_user_errors():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Tried to allocate 2.00 GiB" in err and "more detail" not in err
    for setting in ("trainer.segment_len", "trainer.activation_checkpointing", "trainer.piece_tokens",
                    "trainer.micro_batch_tokens", "context"):
        assert setting in err
    with pytest.raises(torch.OutOfMemoryError), report_user_errors(debug=True):
        raise torch.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="other"), report_user_errors():
        raise RuntimeError("other")  # not a user error: the traceback stays
    # Other commands pass their own advice, or none; host memory is reported the same way.
    with pytest.raises(SystemExit), report_user_errors(memory_advice="a smaller --batch-size"):
        raise MemoryError()
    err = capsys.readouterr().err
    assert "error: out of memory. Lower the memory needed: a smaller --batch-size" in err and "trainer." not in err
    with pytest.raises(SystemExit), report_user_errors(memory_advice=None):
        raise torch.OutOfMemoryError("CUDA out of memory")
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: GPU out of memory (CUDA out of memory)."


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_segmented_under_bf16_autocast_on_gpu():
    model = DnaMambaLM(DnaMambaConfig(d_model=64, n_layer=4)).cuda()
    ids = tokens(batch=2, length=32767).cuda()
    base = torch.cuda.memory_allocated()  # the model and the tokens; the peaks below are counted above this

    def loss_and_grads(segment_len):
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            nll, _ = segmented_lm_loss(model, ids, segment_len) if segment_len else lm_nll_sum(model(ids).logits, ids)
        nll.backward()
        grads = {name: p.grad.float().clone() for name, p in model.named_parameters()}
        return nll.item(), grads, torch.cuda.max_memory_allocated() - base

    one_nll, one, one_peak = loss_and_grads(None)
    seg_nll, seg, seg_peak = loss_and_grads(4000)
    assert abs(seg_nll - one_nll) < 1e-3 * abs(one_nll)
    for name, grad in one.items():
        assert (seg[name] - grad).norm() <= 3e-2 * grad.norm() + 1e-6, name
    print(f"peak memory: one pass {one_peak / 2**20:.0f} MiB, segments of 4000 {seg_peak / 2**20:.0f} MiB")
    assert seg_peak < one_peak / 2
