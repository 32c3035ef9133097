"""spikeclip.energy: SOP and MAC counts of a hand-countable toy network, exactly."""

import pytest
import torch
from torch import nn

from spikeclip import energy
from spikeclip.models import LIF, AttentionCore, ImageEncoder, SpikeCLIPConfig


class Toy(nn.Module):
    def __init__(self, spiking_attention=True):
        super().__init__()
        self.conv_real = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.conv_spikes = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 3)
        self.lif = LIF()
        self.attend = AttentionCore(SpikeCLIPConfig(), spiking=spiking_attention)

    def forward(self, image, spike_image, spike_rows, current, q, k, v):
        self.conv_real(image)
        self.conv_spikes(spike_image)
        self.fc(spike_rows)
        self.lif(current)
        return self.attend(q, k, v)


def toy_inputs():
    image = torch.rand(1, 1, 3, 3) + 0.5  # real values: dense MACs
    spike_image = torch.zeros(1, 1, 3, 3)
    spike_image[0, 0, 0, 0] = spike_image[0, 0, 1, 1] = 1  # corner and centre
    spike_rows = torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 1]])
    current = torch.tensor([[[2.5, 0, 0.5, 3]], [[0, 0, 2, 0]]])  # [T=2, B=1, 4]
    q = torch.tensor([[1.0, 0], [1, 1], [0, 0]]).view(1, 1, 1, 3, 2)  # nnz 3, N=3 > d=2
    k = torch.tensor([[0.0, 1], [0, 0], [1, 0]]).view(1, 1, 1, 3, 2)  # nnz 2
    v = torch.ones(1, 1, 1, 3, 2)
    return image, spike_image, spike_rows, current, q, k, v


def test_toy_counts_exact():
    report = energy.estimate(Toy(), toy_inputs(), images=1)
    rows = {r.name: r for r in report.rows}
    # 3x3 output positions x 2 channels x (1 channel x 3 x 3 taps)
    assert (rows["conv_real"].sops, rows["conv_real"].macs) == (0, 162)
    # with padding 1 the corner spike reaches 4 output positions, the centre one all 9: x 2 ch.
    assert (rows["conv_spikes"].sops, rows["conv_spikes"].macs) == ((4 + 9) * 2, 0)
    # 4 input spikes x 3 outputs each
    assert (rows["fc"].sops, rows["fc"].macs) == (12, 0)
    # h1 = x/2 = [1.25, 0, .25, 1.5] -> spikes 0, 3; h2 = .25 + (2 - .25)/2 = 1.125 -> spike 2
    assert rows["lif"].firing_rate == pytest.approx(3 / 8)
    assert rows["lif"].sops == rows["lif"].macs == 0
    # k^T v: 2 k spikes x d = 2; q (k^T v): 3 q spikes x d = 2
    assert rows["attend"].sops == (2 + 3) * 2
    sops, macs = 26 + 12 + 10, 162
    assert report.sops_per_image == sops and report.macs_per_image == macs
    assert report.total_mJ == pytest.approx((0.9 * sops + 4.6 * macs) * 1e-9)


def test_ann_attention_and_per_image():
    inputs = list(toy_inputs())
    report = energy.estimate(Toy(spiking_attention=False), tuple(inputs), images=2)
    rows = {r.name: r for r in report.rows}
    assert rows["attend"].macs == 2 * 3 * 2 * 2  # q k^T v in the cheaper order: 2 N d min(N, d)
    assert rows["attend"].firing_rate is None
    assert report.macs_per_image == (162 + 24) / 2


def test_image_encoder_report(tmp_path):
    config = SpikeCLIPConfig.named("tiny", width=32, heads=4, image_size=16)
    x = torch.rand(2, 3, 16, 16)
    snn = energy.estimate(ImageEncoder(config).train(), x)
    ann = energy.estimate(ImageEncoder(config.replace(image_neuron="relu")).train(), x)
    assert snn.images == 2 and 0 < snn.total_mJ < ann.total_mJ
    assert ann.sops_per_image == 0 and ann.firing_rates == {}
    assert len(snn.firing_rates) == 4 + config.depth * 7  # tokenizer 4, LIFs per block 6 + attn
    # Every linear and convolution is counted (the spike-fed ones too, whichever kernel runs).
    for report, enc in ((snn, "snn"), (ann, "ann")):
        counted = {r.name for r in report.rows if r.kind in ("linear", "conv") and r.calls}
        assert len(counted) == 5 + config.depth * 6 + 1, enc  # tokenizer 5, block 6, proj
    assert "total" in snn.table()
    snn.plot_firing_rates(tmp_path / "rates.png")
    assert (tmp_path / "rates.png").read_bytes()[:4] == b"\x89PNG"
    assert snn.to_dict()["total_mJ"] == snn.total_mJ


def test_sequence_input_is_per_image():
    """A user's network of multi-step neurons takes [T, B, ...]: figures per image (B), not
    per time step; the same network's counts on B = 1 and B = 3 copies agree per image."""
    from spikeclip.models import SpikingConv2d, SpikingLinear

    net = nn.Sequential(LIF(), SpikingConv2d(2, 3, 3, padding=1), LIF(), nn.Flatten(2),
                        SpikingLinear(3 * 5 * 5, 4))  # fmt: skip
    one = torch.rand(4, 1, 2, 5, 5) * 3  # [T, B=1, C, H, W]
    three = one.expand(4, 3, 2, 5, 5).contiguous()
    r1, r3 = energy.estimate(net, one), energy.estimate(net, three)
    assert r1.images == 1 and r3.images == 3
    assert r3.sops_per_image == r1.sops_per_image > 0
    assert energy.estimate(net, three, time_major=False).images == 4  # as asked
    assert energy.takes_sequences(net) and not energy.takes_sequences(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"\[T, B"):
        energy.estimate(nn.Sequential(LIF()), torch.rand(3))
    ann = energy.estimate(nn.Linear(2, 2), torch.rand(5, 2))
    assert ann.firing_rates == {}
    with pytest.raises(ValueError, match="no spiking neurons"):
        ann.plot_firing_rates("unused.png")
