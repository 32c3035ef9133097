"""The energy frontier's training options: fine-tuning's firing-rate term (spikeclip.train.firing)
and the learnable threshold (LIF(learnable_v_th=True))."""

import math

import pytest
import torch
from torch import nn

from spikeclip.energy import estimate
from spikeclip.models import SpikeCLIPConfig
from spikeclip.models.image_encoder import ImageEncoder
from spikeclip.models.layers import SeqLinearBN
from spikeclip.models.neurons import LIF
from spikeclip.models.spikeclip_model import set_memory
from spikeclip.train.config import RecipeConfig
from spikeclip.train.firing import FiringPenalty


def tiny_encoder(seed=0, **options):
    torch.manual_seed(seed)
    return ImageEncoder(SpikeCLIPConfig.named("tiny", embed_dim=32, **options))


def images(seed=1, n=6):
    return torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("memory", ["plain", "lossless", "low"])
def test_term_is_the_estimates_sops_over_their_ceiling(memory):
    """With target 0 and weight 1 the term x the ceiling is the energy estimate's SOPs of the
    same pass: exactly for linear layers and attention, up to the convolutions' borders; in every
    memory mode (packed units run their op where no gradient reaches it: watched at the unit)."""
    enc = tiny_encoder()
    set_memory(enc, memory)
    x = images()
    with FiringPenalty(enc, 1.0, 0.0) as penalty:
        enc(x)
        ceiling = {k: sum(v) for k, v in penalty._full.items()}
        term, rate = penalty.take()
    counted = {key[0] for key in ceiling}
    # every spike-fed layer of the tiny encoder: tokenizer convs 1-4, q, k, v, attention,
    # proj, fc1, fc2 (not the first convolution nor the readout: real-valued inputs)
    assert len(counted) == 11 and "tokenizer.stages.0.op" not in counted and "proj" not in counted
    report = estimate(enc, x)
    sops = report.sops_per_image * x.shape[0]
    total = sum(ceiling.values())
    assert float(term.detach()) == pytest.approx(rate)
    assert rate * total == pytest.approx(sops, rel=0.03)


def test_linear_layers_exact_and_the_attention_inputs_that_cost():
    """SOPs of a spike-fed linear are spikes x out_features: its N_i x rate_i equals the
    estimate's count exactly; an SSA's v costs nothing when d < N (its N_i is 0, not counted)."""
    enc = tiny_encoder()
    x = images(n=4)
    with FiringPenalty(enc, 1.0, 0.0) as penalty:
        enc(x)
        terms = list(penalty._terms)
        full = {k[0]: v for k, v in penalty._full.items()}
    report = {r.name: r for r in estimate(enc, x).rows}
    linear = [r.name for r in report.values() if r.kind == "linear" and r.sops]
    assert len(linear) == 6  # q, k, v, proj, fc1, fc2
    for name in linear:
        mine = sum(n * float(rate.detach()) for layer, n, rate in terms if layer == name)
        assert mine == pytest.approx(report[name].sops, rel=1e-6), name
    q_cost, k_cost, v_cost = full["blocks.0.attn.attend"]
    assert q_cost > 0 and k_cost > 0 and v_cost == 0  # d = 32 < N = 49 tokens
    attend = "blocks.0.attn.attend"
    attention = sum(n * float(r.detach()) for layer, n, r in terms if layer == attend)
    assert attention == pytest.approx(report["blocks.0.attn.attend"].sops, rel=1e-6)


def one_pass(enc, x, weight, target):
    """(term, rate) of one forward pass of enc on x under a FiringPenalty."""
    with FiringPenalty(enc, weight, target) as penalty:
        enc(x)
        return penalty.take()


def test_gradient_reaches_the_neurons_inputs_and_target_leaves_low_layers_alone():
    enc = tiny_encoder()
    x = images()
    term, rate = one_pass(enc, x, 2.0, 0.0)
    term.backward()
    bias = enc.tokenizer.stages[1].bn.bias.grad
    assert bias is not None and float(bias.abs().sum()) > 0
    assert float(term.detach()) == pytest.approx(2.0 * rate)
    # a target above every input's rate: nothing to pay, a zero term (its gradient zero too)
    term, _ = one_pass(enc, x, 2.0, 0.99)
    assert float(term) == 0.0


def test_one_forward_pass_per_take_and_hooks_removed():
    enc = tiny_encoder()
    x = images()
    with FiringPenalty(enc, 1.0, 0.0) as penalty:
        enc(x)
        first, _ = penalty.take()
        enc(images(seed=5))
        enc(x)  # the pass before it is dropped when the encoder is called again
        again, _ = penalty.take()
        with torch.no_grad():  # evaluation inside the block records nothing
            enc(x)
        none, rate = penalty.take()
    assert float(again) == pytest.approx(float(first))
    assert float(none) == 0.0 and rate == 0.0
    hooks = sum(len(m._forward_pre_hooks) for m in enc.modules())
    assert hooks == 0


def test_training_on_the_term_lowers_the_firing():
    enc = tiny_encoder()
    x = images(n=8)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-2)
    rates = []
    with FiringPenalty(enc, 1.0, 0.0) as penalty:
        for _ in range(8):
            enc(x)
            term, rate = penalty.take()
            rates.append(rate)
            opt.zero_grad()
            term.backward()
            opt.step()
    assert rates[-1] < 0.5 * rates[0], rates


def test_penalty_refuses_a_bad_target():
    with pytest.raises(ValueError, match="firing_target"):
        FiringPenalty(nn.Linear(2, 2), 1.0, 1.0)


def test_recipe_settings_are_checked():
    RecipeConfig(firing_weight=2.0, firing_target=0.1)
    for bad in ({"firing_weight": -1.0}, {"firing_weight": math.nan},
                {"firing_weight": 1.0, "firing_target": 1.0},
                {"firing_weight": 1.0, "firing_target": -0.1},
                {"firing_weight": 1.0, "firing_target": True}):  # fmt: skip
        with pytest.raises(ValueError, match="firing"):
            RecipeConfig(**bad)
    with pytest.raises(ValueError, match=r"firing_target=0\.2 would be ignored"):
        RecipeConfig(firing_target=0.2)
    with pytest.raises(ValueError, match=r"firing_in_alignment=True would be ignored"):
        RecipeConfig(firing_in_alignment=True)
    with pytest.raises(ValueError, match="firing_in_alignment must be True or False"):
        RecipeConfig(firing_weight=1.0, firing_in_alignment="yes")


def test_command_line_sets_them():
    from spikeclip.cli import _parser as build_parser
    from spikeclip.train.commands import recipe_from_args
    from spikeclip.train.stage_commands import _cfg

    args = build_parser().parse_args(
        ["train", "--firing-weight", "3", "--firing-target", "0.05", "--out", "x",
         "--device", "cpu"]
    )  # fmt: skip
    cfg = recipe_from_args(args, demo=False)
    assert (cfg.firing_weight, cfg.firing_target, cfg.firing_in_alignment) == (3.0, 0.05, False)
    args = build_parser().parse_args(
        ["train", "--firing-weight", "1", "--firing-in-alignment", "--out", "x", "--device", "cpu"]
    )  # fmt: skip
    assert recipe_from_args(args, demo=False).firing_in_alignment
    args = build_parser().parse_args(
        ["finetune", "--init", "a", "--dataset", "fashion-mnist", "--out", "b",
         "--firing-weight", "1.5", "--device", "cpu"]
    )  # fmt: skip
    assert _cfg(args).firing_weight == 1.5


# ---- the learnable threshold ----------------------------------------------------------------


@pytest.mark.parametrize("v_reset", [0.0, None])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_learnable_threshold_fires_as_the_lif_at_that_threshold(v_reset, backend):
    """LIF(learnable_v_th) with factor e^s fires exactly where LIF(v_th * e^s) does (inputs in
    continuous random values, so that no membrane lies within rounding of the threshold: e^s
    as computed on any CPU, a last-bit difference from 2^k, cannot flip a spike), in step mode
    "m" and "s"; its gradient reaches s."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 5, 7, generator=g) * 4 - 1
    for s in (-1.0, 0.0, 1.0):
        learned = LIF(v_th=0.5, v_reset=v_reset, learnable_v_th=True, backend=backend)
        with torch.no_grad():
            learned.v_th_log_scale.fill_(s * math.log(2.0))
        fixed = LIF(v_th=0.5 * 2.0**s, v_reset=v_reset, backend=backend)
        assert learned.current_v_th() == pytest.approx(0.5 * 2.0**s)
        assert torch.equal(learned(x), fixed(x))
        single = LIF(v_th=0.5, v_reset=v_reset, learnable_v_th=True, backend=backend,
                     step_mode="s")  # fmt: skip
        single.load_state_dict(learned.state_dict())
        assert torch.equal(torch.stack([single(step) for step in x]), fixed(x))
    y = learned(x.requires_grad_())
    (y * torch.arange(y.numel()).view(y.shape)).sum().backward()
    assert learned.v_th_log_scale.grad is not None and learned.v_th_log_scale.grad != 0


def test_learnable_threshold_in_the_model_and_its_refusals():
    enc = tiny_encoder(learnable_v_th=True)
    names = [n for n, _ in enc.named_parameters() if n.endswith("v_th_log_scale")]
    assert len(names) == sum(isinstance(m, LIF) for m in enc.modules()) > 0
    x = images()
    term, _ = one_pass(enc, x, 1.0, 0.0)
    term.backward()
    assert all(p.grad is not None for n, p in enc.named_parameters() if n in names)
    # e^s = 1: the same spikes as the model without it (same weights)
    plain = tiny_encoder()
    plain.load_state_dict(enc.state_dict(), strict=False)
    enc.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), plain(x))
    with pytest.raises(ValueError, match="learnable_v_th needs v_reset 0 or None"):
        LIF(v_reset=-0.5, learnable_v_th=True)
    with pytest.raises(ValueError, match="learnable_v_th"):
        SpikeCLIPConfig(learnable_v_th="yes")
    unit = SeqLinearBN(4, 4, neuron=LIF(learnable_v_th=True))
    assert unit._fused_bn_lif(torch.zeros(2, 4)) is None  # fused kernels take fixed neurons
