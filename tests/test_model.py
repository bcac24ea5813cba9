"""The reference Mamba LM: recurrence equals the parallel forward, streaming equals one pass, save/load."""

import math

import pytest
import torch

from dna_mamba.model import PAPER_SIZES, DnaMambaConfig, DnaMambaLM, load_pretrained, save_pretrained


def tiny_config(**kw) -> DnaMambaConfig:
    base = dict(d_model=24, n_layer=2, d_state=4, d_conv=4, expand=2)
    base.update(kw)
    return DnaMambaConfig(**base)


def random_model(seed=0, **kw) -> DnaMambaLM:
    torch.manual_seed(seed)
    model = DnaMambaLM(tiny_config(**kw))
    # Move every parameter off its init (D = 1, zero biases) so each path of the block matters in the checks.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def test_step_equals_parallel_forward():
    model = random_model()
    tokens = torch.randint(0, 5, (3, 37))
    logits = model(tokens).logits
    state = model.allocate_state(3)
    stepped = []
    for t in range(tokens.shape[1]):
        out, state = model.step(tokens[:, t], state)
        stepped.append(out)
    torch.testing.assert_close(torch.stack(stepped, 1), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [[37], [1, 36], [5, 5, 27], [3, 1, 2, 31]])
def test_streamed_chunks_equal_one_pass(chunks):
    model = random_model(seed=1)
    tokens = torch.randint(0, 5, (2, sum(chunks)))
    full = model(tokens, return_state=True)
    state, pieces, start = None, [], 0
    for size in chunks:
        out = model(tokens[:, start:start + size], state=state, return_state=True)
        pieces.append(out.logits)
        state = out.state
        start += size
    torch.testing.assert_close(torch.cat(pieces, 1), full.logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, full.state, strict=True):
        torch.testing.assert_close(a.ssm, b.ssm, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.conv, b.conv, rtol=1e-5, atol=1e-5)


def test_streamed_gradients_equal_one_pass():
    model = random_model(seed=2)
    tokens = torch.randint(0, 5, (2, 20))
    model(tokens).logits.square().sum().backward()
    full = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    first = model(tokens[:, :7], return_state=True)
    second = model(tokens[:, 7:], state=first.state)
    (first.logits.square().sum() + second.logits.square().sum()).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, full[name], rtol=1e-4, atol=1e-5, msg=name)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    torch.manual_seed(3)
    model = DnaMambaLM(tiny_config()).eval()
    tokens = torch.randint(0, 5, (2, 50))
    save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.lm_head.weight.data_ptr() == loaded.embedding.weight.data_ptr(), "tied weights must stay tied"
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=0, atol=0)
    # Saving again over an existing directory replaces it atomically.
    save_pretrained(loaded, tmp_path / "m")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved dna_mamba model"):
        load_pretrained(tmp_path)


def test_mamba_initialisation():
    cfg = tiny_config(d_model=64, d_state=16)
    torch.manual_seed(0)
    mixer = DnaMambaLM(cfg).layers[0].mixer
    assert mixer.A_log.dtype == torch.float32 and mixer.D.dtype == torch.float32
    torch.testing.assert_close(-torch.exp(mixer.A_log[5]), -torch.arange(1.0, 17.0))  # S4D-real
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert dt.min() >= cfg.dt_init_floor and dt.max() <= cfg.dt_max * 1.0001
    # Log-uniform: the median of log dt is near the middle of [log dt_min, log dt_max].
    middle = (math.log(cfg.dt_min) + math.log(cfg.dt_max)) / 2
    assert abs(dt.log().median().item() - middle) < 0.8


def test_no_weight_decay_groups():
    model = DnaMambaLM(tiny_config())
    decay, no_decay = model.param_groups(0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    for n in no_decay_names:
        assert any(k in n for k in ("A_log", ".D", "bias", "norm", "embedding")), n
    assert any("A_log" in n for n in no_decay_names) and any(n.endswith(".D") for n in no_decay_names)
    assert all("weight" in n and "norm" not in n for n in decay_names)
    assert decay_names and decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


@pytest.mark.parametrize("size,expected", [("250k", 0.25e6), ("1.4m", 1.4e6), ("7m", 7.0e6), ("40.7m", 40.7e6)])
def test_paper_sizes_match_parameter_counts(size, expected):
    n_layer, d_model = PAPER_SIZES[size]
    with torch.device("meta"):
        model = DnaMambaLM(DnaMambaConfig(n_layer=n_layer, d_model=d_model))
    assert abs(model.num_parameters() - expected) / expected < 0.12, model.num_parameters()


def test_config_validation():
    with pytest.raises(ValueError, match="d_conv"):
        DnaMambaConfig(d_conv=5)
    with pytest.raises(ValueError, match="d_state"):
        DnaMambaConfig(d_state=128)
    with pytest.raises(ValueError, match="d_model"):
        DnaMambaConfig(d_model=0)
    with pytest.raises(ValueError, match="unknown DnaMambaConfig fields"):
        DnaMambaConfig.from_dict({"d_model": 8, "bogus": 1})
